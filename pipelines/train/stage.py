"""The train stage's entry point: ``python -m pipelines.train [--section NAME]``."""

from __future__ import annotations

from typing import Any

from pipelines.augment import AugmentParams
from pipelines.config import BaseParams, load_params, parse_section
from pipelines.errors import ConfigError
from pipelines.stage import run_stage
from pipelines.train.loop import train
from pipelines.train.params import TrainParams


def main(argv: list[str] | None = None) -> None:
    """DVC entry point: ``python -m pipelines.train [--section NAME]`` (also under ``torchrun``).

    Reads ``base`` and the ``train`` section, or another section with the same schema (e.g.
    ``train_frontal`` for the frontal-only ablation, with its own ``out`` paths).
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipelines.train")
    ap.add_argument("--section", default="train", help="params.yaml section (default: train)")
    args = ap.parse_args(argv)

    def go() -> dict[str, Any]:
        raw = load_params()
        if args.section != "train" and args.section not in raw:
            raise ConfigError(f"params.yaml: no section '{args.section}'")
        base = parse_section(BaseParams, "base", raw, "params.yaml")
        params = parse_section(TrainParams, args.section, raw, "params.yaml")
        seed = base.seed if params.seed is None else params.seed
        policy = parse_section(AugmentParams, "augment", raw, "params.yaml")
        return train(params, seed, policy if params.online_augment else None).summary

    run_stage(go)
