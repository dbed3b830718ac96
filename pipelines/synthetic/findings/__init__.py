"""The 14 findings of the synthetic chest, one class each, and the tables derived from them.

Each finding is a :class:`~pipelines.synthetic.findings.base.Finding` subclass marked
``@register`` in the module of its region (:mod:`.lungs`, :mod:`.pleura`,
:mod:`.mediastinum`): its visibility, chronicity, parameter draw, reshaping of the anatomy and
drawing on each view live together. Adding a finding is adding one such class (and its label
to :data:`pipelines.labels.FINDINGS`).

:data:`REGISTRY` holds them in :data:`~pipelines.labels.FINDINGS` order, the order the renderer
applies them in.
"""

from __future__ import annotations

from pipelines.labels import FINDINGS
from pipelines.synthetic.findings import lungs, mediastinum, pleura  # noqa: F401 (registers)
from pipelines.synthetic.findings.base import Finding, registered


def _in_label_order(found: dict[str, Finding]) -> dict[str, Finding]:
    missing, extra = sorted(set(FINDINGS) - set(found)), sorted(set(found) - set(FINDINGS))
    if missing or extra:
        raise RuntimeError(f"synthetic findings: missing classes {missing}, unknown {extra}")
    return {name: found[name] for name in FINDINGS}


#: name -> finding, in :data:`~pipelines.labels.FINDINGS` order.
REGISTRY: dict[str, Finding] = _in_label_order(registered())

#: finding -> on which view(s) it shows.
VISIBILITY: dict[str, dict[str, bool]] = {
    name: {"frontal": f.frontal, "lateral": f.lateral} for name, f in REGISTRY.items()
}
#: Findings seen only on the lateral view (absent from the PA image).
LATERAL_ONLY_FINDINGS: tuple[str, ...] = tuple(n for n, f in REGISTRY.items() if not f.frontal)
#: Findings seen only on the frontal view (absent from the lateral image).
FRONTAL_ONLY_FINDINGS: tuple[str, ...] = tuple(n for n, f in REGISTRY.items() if not f.lateral)
#: Findings that tend to persist across a patient's studies, in the order their patient state
#: is drawn (:attr:`~pipelines.synthetic.findings.base.Finding.state_order`).
CHRONIC_FINDINGS: tuple[str, ...] = tuple(
    f.name for f in sorted((f for f in REGISTRY.values() if f.chronic), key=lambda f: f.state_order)
)

__all__ = [
    "CHRONIC_FINDINGS",
    "FRONTAL_ONLY_FINDINGS",
    "LATERAL_ONLY_FINDINGS",
    "REGISTRY",
    "VISIBILITY",
    "Finding",
]
