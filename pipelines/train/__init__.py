"""The train stage: the two-branch DenseNet-121 on prepared shards, resumable, tracked, DDP-ready.

Reads the ``train`` split of ``data/prepared`` (plus ``data/augmented``'s offline copies when that
folder holds an index) and the ``val`` split of ``data/prepared``. Per epoch: one pass of AdamW
with a linear warm-up then cosine learning-rate schedule (per step), gradient clipping and
autocast (``precision``, see :func:`pipelines.runtime.resolve_precision`), then validation: loss
and macro AUROC (per finding over the known labels, findings without both classes left out).
The best epoch by validation macro AUROC is kept; training stops early after ``patience``
epochs without improvement. With ``online_augment`` every training batch is augmented on the
device first (:class:`pipelines.augment.OnlineAugment`).

Outputs (rank 0 only)::

    models/best.pt                  {"model": state_dict, "meta": {...}} (see pipelines.model)
    models/checkpoints/last.pt      everything needed to resume (persisted across DVC runs)
    models/checkpoints/best.pt      the best model so far (so a resumed run still has it)
    metrics/train.json              summary (best epoch, its AUROC per finding, pairs/s, ...)
    dvclive/train/                  dvclive metrics.json + plots/metrics/*.tsv, per epoch
    runs/train/                     TensorBoard event files, per epoch

Resume (``resume: true``) restores a :class:`pipelines.checkpoint.Checkpoint` from ``last.pt``
(model, optimizer, scheduler, scaler, the RNG states of every rank, the loop state), then
replays the logged history into fresh dvclive / TensorBoard logs, so a killed run continued to
the end matches an uninterrupted one.

Distributed: under ``torchrun --nproc_per_node=N -m pipelines.train`` each process takes
``LOCAL_RANK`` (:func:`pipelines.runtime.setup_runtime`); the model is wrapped in
DistributedDataParallel, the train split goes through a DistributedSampler, validation is split
across ranks and gathered so every rank computes the same AUROC (hence the same early-stopping
decision).
"""

from pipelines.train.build import build_scheduler
from pipelines.train.loop import TrainResult, train
from pipelines.train.params import MIN_SIZE, TrainParams
from pipelines.train.stage import main

__all__ = ["MIN_SIZE", "TrainParams", "TrainResult", "build_scheduler", "main", "train"]
