"""Prefect flows that sequence the DVC stages of ``dvc.yaml``."""
