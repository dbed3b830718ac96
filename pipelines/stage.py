"""Running a stage for a user: logging set up, expected failures as one clear line, exit code 2.

Expected failures are :class:`~pipelines.errors.UserError` (inputs, params, a missing upstream
output) and refusals of the machine (a full disk, an unwritable output folder: OSErrors with an
errno in :data:`~pipelines.errors.ENVIRONMENT_ERRNOS`): they print ``error: <message>`` on one
line, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from pipelines.errors import UserError, describe_os_error, is_environment_error


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
    """Call ``fn`` with logging configured; user errors exit 2 with a single clear line.

    So do OSErrors of the environment (a full disk, an unwritable or missing folder ...):
    ``error: <path>: <reason> (<hint>)``, never a traceback.
    """
    setup_logging()
    try:
        return fn()
    except UserError as exc:
        fail(" ".join(str(exc).split("\n")))
    except OSError as exc:
        if not is_environment_error(exc):
            raise
        path = exc.filename if exc.filename is not None else "(unknown path)"
        fail(f"{path}: {describe_os_error(exc)}")
