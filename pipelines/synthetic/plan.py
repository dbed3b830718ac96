"""The plan of the dataset: every study to write, drawn from the seed before any pixel.

:func:`plan_studies` draws patients (anatomy, chronic state, fake PHI), their studies (findings,
dates, header values, UIDs) and each image's encoding and pixel seed. Two generators spawned
from ``params.seed`` keep the draws apart: one for the plan, one for the random hex names of
the folders and files. A job is a dict::

    index, patient, study_uid, anatomy, findings (the truth, drawn in the pixels),
    labels (what a report says: the findings with label errors), has_lateral,
    attributes ({sex, age_band}: the subgroups, as ingest reads them from the headers),
    scale (only in a planted subgroup effect's group: (finding, strength factor) pairs),
    images: [{view, file, seed, kw (the write_dicom arguments)}, ...]
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from pipelines.demographics import dicom_age_band, sex_of
from pipelines.labels import FINDINGS
from pipelines.synthetic.anatomy import Anatomy, next_study, sample_anatomy
from pipelines.synthetic.findings import CHRONIC_FINDINGS
from pipelines.synthetic.params import SynthesizeParams
from pipelines.synthetic.style import LabelNoise

_FIRST_TEXT = (  # alternating male / female
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Carlos Maria Wei Mei Ahmed Fatima Ivan Olga Kofi "
    "Ama Hiroshi Yuki"
)
_LAST_TEXT = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Lopez Wilson Anderson Taylor Moore "
    "Martin Lee Walker Hall Young King Wright Nguyen Chen Kowalski Novak Mensah Tanaka Okafor "
    "Petrov Rossi Schmidt"
)
_FIRST, _LAST = tuple(_FIRST_TEXT.split()), tuple(_LAST_TEXT.split())
_INSTITUTIONS = (
    "Northfield General Hospital",
    "St. Aurelia Medical Center",
    "Lakeside University Clinic",
    "Riverbend Community Hospital",
    "Mount Calder Regional",
)


class _HexNames:
    """Unique random 16-digit hex names (folders and files) from their own generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def new(self) -> str:
        while (h := self._rng.bytes(8).hex()) in self._used:
            pass
        self._used.add(h)
        return h


def plan_studies(params: SynthesizeParams) -> list[dict[str, Any]]:
    """Every study to write: patients, findings, PHI, names, UIDs, encodings (no pixels).

    Args:
        params: the stage parameters.

    Returns:
        One job per study (see the module docstring), ``params.studies`` in all.
    """
    plan_ss, names_ss, labels_ss = np.random.SeedSequence(params.seed).spawn(3)
    rng, names = np.random.default_rng(plan_ss), _HexNames(np.random.default_rng(names_ss))
    label_rng = np.random.default_rng(labels_ss)  # the label errors draw apart from the rest
    prevalence = params.prevalences()
    jobs: list[dict[str, Any]] = []
    patient = 0
    while len(jobs) < params.studies:
        n = min(
            int(rng.integers(1, params.max_studies_per_patient + 1)), params.studies - len(jobs)
        )
        anatomy = sample_anatomy(rng)
        state = {f: bool(rng.random() < prevalence[f]) for f in CHRONIC_FINDINGS}
        phi_patient = _patient_phi(rng)
        days = np.sort(rng.integers(0, 14 * 365, size=n))
        patient_dir = names.new()
        for k in range(n):
            i = len(jobs)
            study = next_study(anatomy, rng)
            findings = _study_findings(rng, state, prevalence, params.persistence)
            has_lateral = bool(rng.random() >= params.lateral_missing)
            modality = "CR" if rng.random() < params.cr else "DX"
            date = np.datetime64("2010-01-01") + np.timedelta64(int(days[k]), "D")
            phi = phi_patient | _study_phi(rng, date)
            study_uid = generate_uid(entropy_srcs=[str(params.seed), "study", str(i)])
            study_dir = f"{patient_dir}/{names.new()}"
            images = _images(
                params, rng, names, i, study_dir, study_uid, phi, modality, has_lateral
            )
            job = _job(i, patient, study_uid, study, findings, has_lateral, images)
            job["labels"] = report_labels(findings, params.label_noise(), label_rng)
            job["attributes"] = attributes(phi)
            effect = params.subgroup_effect
            if effect is not None and effect.applies(job["attributes"]):
                job["scale"] = ((effect.finding, effect.strength),)
            jobs.append(job)
        patient += 1
    return jobs


def _job(
    i: int,
    patient: int,
    study_uid: str,
    anatomy: Anatomy,
    findings: list[str],
    has_lateral: bool,
    images: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "index": i,
        "patient": patient,
        "study_uid": study_uid,
        "anatomy": anatomy,
        "findings": tuple(findings),
        "has_lateral": has_lateral,
        "images": images,
    }


def attributes(phi: dict[str, str]) -> dict[str, str]:
    """A study's subgroup attributes as ingest will read them back from its DICOM headers."""
    return {
        "sex": sex_of(phi["PatientSex"]),
        "age_band": dicom_age_band(None, phi["PatientBirthDate"], phi["StudyDate"]),
    }


def report_labels(
    findings: list[str], noise: LabelNoise, rng: np.random.Generator
) -> dict[str, float]:
    """The labels a text-mined report would give the study: its findings, with report errors.

    Per finding, in label order, three uniforms decide: missed (a present finding labelled 0),
    spurious (an absent one labelled 1), unmentioned (blank: NaN). Exact labels when ``noise``
    is all zero (the draws happen anyway, so the other studies' labels do not shift).
    """
    out: dict[str, float] = {}
    for f in FINDINGS:
        miss, spur, blank = rng.random(3)
        present = f in findings
        label = float(not miss < noise.missed) if present else float(spur < noise.spurious)
        out[f] = float("nan") if blank < noise.unmentioned else label
    return out


def _patient_phi(rng: np.random.Generator) -> dict[str, str]:
    """A patient's fake name, MRN, birth date, sex and institution."""
    sex = "F" if rng.random() < 0.5 else "M"
    first = _FIRST[int(rng.integers(len(_FIRST) // 2)) * 2 + (sex == "F")]
    return {
        "PatientName": f"{_LAST[int(rng.integers(len(_LAST)))]}^{first}",
        "PatientID": f"MRN{int(rng.integers(10**6, 10**7))}",
        "PatientBirthDate": f"{int(rng.integers(1935, 2003))}"
        f"{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "PatientSex": sex,
        "InstitutionName": _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
    }


def _study_findings(
    rng: np.random.Generator,
    state: dict[str, bool],
    prevalence: dict[str, float],
    persistence: float,
) -> list[str]:
    """A study's findings: a chronic one repeats the patient's state with ``persistence``."""
    findings = []
    for f in FINDINGS:
        if f in state and rng.random() < persistence:
            present = state[f]
        else:
            present = bool(rng.random() < prevalence[f])
        if present:
            findings.append(f)
    return findings


def _study_phi(rng: np.random.Generator, date: np.datetime64) -> dict[str, str]:
    """A study's fake accession number, dates, time, referring physician and study id."""
    doc_last = _LAST[int(rng.integers(len(_LAST)))]
    doc_first = _FIRST[int(rng.integers(len(_FIRST)))]
    return {
        "AccessionNumber": f"A{int(rng.integers(10**8, 10**9))}",
        "StudyDate": str(date).replace("-", ""),
        "SeriesDate": str(date).replace("-", ""),
        "StudyTime": f"{int(rng.integers(7, 20)):02d}{int(rng.integers(60)):02d}00",
        "ReferringPhysicianName": f"{doc_last}^{doc_first}^^Dr",
        "StudyID": str(int(rng.integers(1, 10**5))),
    }


def _images(
    params: SynthesizeParams,
    rng: np.random.Generator,
    names: _HexNames,
    i: int,
    study_dir: str,
    study_uid: str,
    phi: dict[str, str],
    modality: str,
    has_lateral: bool,
) -> list[dict[str, Any]]:
    """The PA and (with ``has_lateral``) lateral image of study ``i``: file, seed, encoding."""
    images = []
    for view, position in (("PA", "PA"), ("LATERAL", "LL")):
        u = rng.random(5)
        bits = int(rng.choice([12, 14, 16]))
        if view == "LATERAL" and not has_lateral:
            continue
        lut = bool(u[1] < params.voi_lut)
        rescale = (1.0, 0.0) if lut or u[2] < 0.5 else (1.0, -1024.0)
        images.append(
            {
                "view": view,
                "file": f"{study_dir}/{names.new()}.dcm",
                "seed": int(rng.integers(0, 2**62)),
                "kw": {
                    "photometric": "MONOCHROME1" if u[0] < params.monochrome1 else "MONOCHROME2",
                    "bits_stored": bits,
                    "view_position": position,
                    "modality": modality,
                    "uids": _uids(params.seed, i, view, study_uid),
                    "phi": phi,
                    "voi_lut_sequence": lut,
                    "rescale": rescale,
                    "value_range": (0.02 + 0.08 * float(u[3]), 0.85 + 0.13 * float(u[4])),
                    "view_code": position if rng.random() < params.view_code else None,
                },
            }
        )
    return images


def _uids(seed: int, i: int, view: str, study_uid: str) -> dict[str, str]:
    """The UIDs of the ``view`` image of study ``i`` (derived from the seed, not drawn)."""
    return {
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": generate_uid(entropy_srcs=[str(seed), "series", str(i), view]),
        "SOPInstanceUID": generate_uid(entropy_srcs=[str(seed), "sop", str(i), view]),
    }
