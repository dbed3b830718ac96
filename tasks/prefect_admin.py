"""Prefect server objects the flows rely on (global concurrency limits)."""

from __future__ import annotations

from contextlib import suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound


def ensure_concurrency_limit(name: str, limit: int) -> str:
    """Create the global concurrency limit ``name`` with ``limit`` slots unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another run may create it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit)
                )
    return name
