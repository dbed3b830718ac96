"""Every DICOM rule of the project, in one package.

- :mod:`~pipelines.dicom.header`: quiet header reading and typed access to header values;
- :mod:`~pipelines.dicom.view`: the canonical view map of every source, and a DICOM header's view;
- :mod:`~pipelines.dicom.policy`: what a usable chest radiograph is (ingest and ``cxr predict``);
- :mod:`~pipelines.dicom.choice`: which frontal / lateral image of a study is used (pair and
  ``cxr predict``);
- :mod:`~pipelines.dicom.integrity`: byte-level checks of the Pixel Data without decoding it;
- :mod:`~pipelines.dicom.pixels`: DICOM pixels to a display-ready float image;
- :mod:`~pipelines.dicom.reasons`: the reason codes of a rejected file.

The package imports nothing on its own: :mod:`~pipelines.dicom.view` and
:mod:`~pipelines.dicom.choice` are used by readers and stages that never touch pydicom.
"""
