"""DICOM outputs of ``cxr predict --dicom-out DIR``: a Comprehensive SR and Secondary Captures.

For a DICOM study, the results travel back into the source study as objects every PACS viewer
shows (built with highdicom):

- :mod:`~pipelines.dicom_out.sr`: a Comprehensive SR, TID 1500 Measurement Report: the
  algorithm, per finding a qualitative evaluation (Present / Absent at the validation
  threshold, Not Evaluated when the model was not trained on it) and the probability, the
  source images referenced;
- :mod:`~pipelines.dicom_out.sc`: per (finding, view) overlay given, a Secondary Capture of the
  overlay, derived from its source image and marked not for primary diagnosis;
- :mod:`~pipelines.dicom_out.codes`: every code they use, with its source;
- :mod:`~pipelines.dicom_out.identity`: the algorithm identification, the source headers,
  deterministic UIDs and PHI-free file names;
- :mod:`~pipelines.dicom_out.write`: writing one study's objects.

These objects are for the hospital's own PACS: they carry the source's patient and study
modules, and they are the only outputs of the pipeline that do.
"""

from pipelines.dicom_out.identity import Algorithm, algorithm_from_card
from pipelines.dicom_out.write import Overlays, require_dicom, write_study

__all__ = ["Algorithm", "Overlays", "algorithm_from_card", "require_dicom", "write_study"]
