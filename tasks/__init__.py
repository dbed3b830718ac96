"""Prefect tasks: run DVC stages and publish artifacts. No ML logic lives here."""
