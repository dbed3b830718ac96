"""The embedded dataset: synthetic chest X-ray studies (PA + lateral) written as real DICOM files.

Run as the ``synthesize`` DVC stage (``python -m pipelines.synthetic``, :mod:`.stage`). The
package, in reading order:

- :mod:`.params`: :class:`SynthesizeParams`, the ``synthesize`` section of ``params.yaml``;
- :mod:`.plan`: every study to write (patients, findings, fake PHI, UIDs, encodings);
- :mod:`.anatomy`: a patient's chest shared by both views (:class:`Anatomy`) and its geometry;
- :mod:`.shapes`: the drawing primitives (grid, soft edges, smooth noise, discs, bands);
- :mod:`.frames`: the normal anatomy of one view, as the findings see it;
- :mod:`.findings`: the 14 findings, one class each (visibility, draw, reshape, drawing);
- :mod:`.render`: one view of a chest as a display image (:func:`render_view`);
- :mod:`.dicom_writer`: that image as a DX or CR DICOM file (:func:`write_dicom`);
- :mod:`.stage`: the stage itself (:func:`synthesize`, ``main``).
"""

from pipelines.synthetic.anatomy import sample_anatomy
from pipelines.synthetic.dicom_writer import write_dicom
from pipelines.synthetic.params import SynthesizeParams
from pipelines.synthetic.render import render_view
from pipelines.synthetic.stage import synthesize

__all__ = ["SynthesizeParams", "render_view", "sample_anatomy", "synthesize", "write_dicom"]
