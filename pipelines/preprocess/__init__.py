"""preprocess stage: the studies table -> uint8 shards of (frontal, lateral) pairs per split.

``python -m pipelines.preprocess`` runs the whole stage as ``dvc.yaml`` does; ``--part I
--parts N`` and ``--merge N`` run it sharded (:mod:`pipelines.preprocess.parts`).

- :mod:`~pipelines.preprocess.core`: params, the decode-and-shard loop, the process pool;
- :mod:`~pipelines.preprocess.parts`: sharded runs and their merge;
- :mod:`~pipelines.preprocess.grid`: the preview PNG;
- :mod:`~pipelines.preprocess.stage`: the stage's entry points and command line.
"""

from pipelines.preprocess.core import (
    PARTS_DIR,
    REQUIRED_COLUMNS,
    PreprocessParams,
    PreprocessResult,
    preprocess_studies,
)
from pipelines.preprocess.grid import save_grid
from pipelines.preprocess.parts import (
    PART_FILE,
    merge_parts,
    part_bounds,
    part_name,
    preprocess_part,
)
from pipelines.preprocess.stage import (
    GRID_PATH,
    METRICS_PATH,
    main,
    run_merge,
    run_part,
    run_preprocess,
)

__all__ = [
    "GRID_PATH",
    "METRICS_PATH",
    "PARTS_DIR",
    "PART_FILE",
    "REQUIRED_COLUMNS",
    "PreprocessParams",
    "PreprocessResult",
    "main",
    "merge_parts",
    "part_bounds",
    "part_name",
    "preprocess_part",
    "preprocess_studies",
    "run_merge",
    "run_part",
    "run_preprocess",
    "save_grid",
]
