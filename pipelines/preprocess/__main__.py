"""``python -m pipelines.preprocess``: the preprocess stage (see :mod:`pipelines.preprocess`)."""

from pipelines.preprocess.stage import main

main()
