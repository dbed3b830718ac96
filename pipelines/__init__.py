"""cxr-dag: stage logic for the chest X-ray pipeline (no Prefect imports here)."""

__version__ = "0.1.0"
