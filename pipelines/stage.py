"""Running a stage for a user: logging set up, expected failures as one clear line, exit code 2.

Expected failures are errors about the user's inputs or params (:class:`UserError` and its
subclasses, config and source errors): they print ``error: <message>`` without a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class UserError(Exception):
    """A failure caused by inputs or params, shown to the user as one line."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types shown as one line (imported lazily to keep stage start-up light)."""
    from pipelines.config import ConfigError
    from pipelines.sources import SourceError

    return (UserError, ConfigError, SourceError, FileNotFoundError)


def setup_logging() -> None:
    """INFO-level logs to stderr (``CXR_LOG_LEVEL`` overrides)."""
    logging.basicConfig(
        level=os.environ.get("CXR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` to stderr and exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_stage(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` with logging configured; user errors exit 2 with a single clear line."""
    setup_logging()
    try:
        return fn()
    except user_error_types() as exc:
        fail(str(exc))
