"""``python -m pipelines.train``: the train stage (see :mod:`pipelines.train`)."""

from pipelines.train.stage import main

main()
