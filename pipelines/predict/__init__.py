"""Run an exported model on chest X-ray studies (``cxr predict PATH``).

``PATH`` is one of:

- a **DICOM study folder** (searched recursively): the frontal and lateral images are chosen from
  the headers (:func:`pipelines.dicom.view.dicom_view`);
- **a pair of image files** ``(frontal, lateral)`` or one frontal image: DICOM, PNG or JPEG,
  recognised by content;
- a **CSV of studies** with a ``frontal`` column, an optional ``lateral`` column and an optional
  ``study`` column; relative paths are relative to the CSV's folder.

Images are decoded by :func:`pipelines.imaging.prepare_image`, the code that preprocess uses
(modality + VOI LUT, MONOCHROME1 inverted, resized to the model card's size), so a study is seen
here exactly as the model saw its training data.

DICOM headers are checked with ingest's rules (:mod:`pipelines.dicom.policy`): only radiographs
count (Modality CR, DX or DR, or no Modality), and a study whose BodyPartExamined names a
non-chest part (and no chest word) is refused, so predict refuses exactly the studies ingest
rejects as ``not_chest``; a blank, ``PORTABLE`` or ``UNKNOWN`` body part is accepted. A
``FOR PROCESSING`` image (raw detector data, ingest's ``for_processing``) is never used: in a
study folder it is skipped, as ingest rejects it, and a folder of nothing else, or such an image
given directly, is refused.

View choice in a DICOM folder (deterministic, documented here and in the output's ``frontal``
and ``lateral`` columns) is the pair stage's rule (:mod:`pipelines.dicom.choice`): the
**frontal** image is a PA view if there is one, else an AP view, then the one with the most
pixels (rows x columns), then the first path in string order; the **lateral** is a LATERAL
(LL / RL ...) view, the one with the most pixels, then the first path. Views ``OTHER``
(oblique, unknown) are not used.

Models are loaded by :mod:`pipelines.runners` (onnxruntime by default, so no PyTorch is needed
at inference); the model card beside the model gives the image size, the finding names, each
finding's status, the calibration maps and the validation-chosen thresholds on their scale, and
the out-of-distribution gate's thresholds. A study whose pixels the gate finds unlike the
training images (a CT slice, a photograph, a knee, a radiograph of another kind than the model
learnt) is **refused**: no probability, no decision, the reason instead; a single refused study
is an error (exit status 2), in a batch each refused study says so and the others are scored.
Only a **trained** finding with a threshold gets a probability and a yes / no call; the others
are reported ``not trained`` with the reason (:mod:`pipelines.predict.decisions`), in the table,
the JSON and the CSV alike. A model
trained on the embedded synthetic dataset, or whose card names no data source, says so with
every output.

The package: :mod:`~pipelines.predict.studies` (which files make a study),
:mod:`~pipelines.predict.decisions` (what may be said per finding),
:mod:`~pipelines.predict.run` (decode, score, decide) and :mod:`~pipelines.predict.render`
(table, JSON, CSV).

With ``--dicom-out DIR`` (DICOM inputs only), each study's results are also written as DICOM
into its source study by :mod:`pipelines.dicom_out`: a Comprehensive SR always, and a Secondary
Capture per overlay that ``overlays_for`` (:data:`OverlaysFor`, the explanation's hook) gives.
Those objects carry the source's patient and study modules, for the hospital's PACS; every
other output stays free of PHI.

Errors about the input (a folder with no usable frontal view, images of several patients or
studies in one folder, a non-chest study, an unreadable image, a missing model card) raise
:class:`PredictError` with one clear sentence and no PHI: header values of identifying tags are
compared, never printed.
"""

from pipelines.predict.decisions import (
    NOT_TRAINED,
    REFUSED,
    Decisions,
    data_notice,
    decisions_from_card,
)
from pipelines.predict.render import OutputFormat, format_predictions
from pipelines.predict.run import (
    DEFAULT_MODEL,
    OverlaysFor,
    predict,
    predict_command,
    refused_studies,
    write_dicom_outputs,
)
from pipelines.predict.studies import (
    StudyInput,
    check_headers,
    collect_studies,
    find_study_views,
)

__all__ = [
    "DEFAULT_MODEL",
    "NOT_TRAINED",
    "REFUSED",
    "Decisions",
    "OutputFormat",
    "OverlaysFor",
    "StudyInput",
    "check_headers",
    "collect_studies",
    "data_notice",
    "decisions_from_card",
    "find_study_views",
    "format_predictions",
    "predict",
    "predict_command",
    "refused_studies",
    "write_dicom_outputs",
]
