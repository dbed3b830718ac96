"""Every params section of params.yaml with the class that reads it: the architecture test
checks their defaults, the params loader's fuzz target parses them."""

from __future__ import annotations


def params_sections(schedule: bool = True) -> list[tuple[str, type]]:
    """(section, params class) pairs; ``schedule=False`` leaves out the Prefect deployment's
    section (its class imports Prefect)."""
    from pipelines.augment import AugmentParams
    from pipelines.config import BaseParams
    from pipelines.evaluate import EvaluateParams
    from pipelines.export import ExportParams
    from pipelines.ingest import IngestParams
    from pipelines.pair import PairParams
    from pipelines.preprocess import PreprocessParams
    from pipelines.scoring import ScoreParams
    from pipelines.synthetic import SynthesizeParams
    from pipelines.train import TrainParams

    sections: list[tuple[str, type]] = [("base", BaseParams)]
    if schedule:
        from flows.serve import ScheduleParams

        sections.append(("schedule", ScheduleParams))
    return [
        *sections,
        ("score", ScoreParams),
        ("synthesize", SynthesizeParams),
        ("ingest", IngestParams),
        ("pair", PairParams),
        ("preprocess", PreprocessParams),
        ("augment", AugmentParams),
        ("train", TrainParams),
        ("evaluate", EvaluateParams),
        ("export", ExportParams),
    ]
