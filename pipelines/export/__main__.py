"""``python -m pipelines.export``: the export stage (see :mod:`pipelines.export.stage`)."""

from pipelines.export.stage import main

main()
