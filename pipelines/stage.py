"""Running a stage for a user: logging set up, expected failures as one clear line, exit code 2.

Expected failures are errors about the user's inputs or params (:class:`UserError` and its
subclasses, config and source errors) or refusals of the machine (a full disk, an unwritable
output folder: OSErrors with an errno in :data:`ENVIRONMENT_ERRNOS`): they print
``error: <message>`` on one line, without a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class UserError(Exception):
    """A failure caused by inputs or params, shown to the user as one line."""


# OSErrors that mean the machine refused (disk, permissions, paths): shown as one line that
# names the path, as user errors are. Any other OSError is a bug and keeps its traceback.
_ENVIRONMENT_NAMES = "EACCES EPERM ENOSPC EDQUOT EROFS ENOTDIR EISDIR EEXIST ENOENT ENAMETOOLONG"
_ENVIRONMENT_NAMES += " ELOOP EMFILE ENFILE EIO EFBIG ETXTBSY EBUSY"
ENVIRONMENT_ERRNOS: frozenset[int] = frozenset(
    getattr(errno, name) for name in _ENVIRONMENT_NAMES.split() if hasattr(errno, name)
)
_HINTS: dict[int, str] = {
    errno.ENOSPC: "the disk is full; free space or point the output elsewhere",
    errno.EACCES: "make the folder writable or point the output elsewhere",
    errno.EPERM: "make the folder writable or point the output elsewhere",
    errno.EROFS: "point the output at a writable file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}
if hasattr(errno, "EDQUOT"):
    _HINTS[errno.EDQUOT] = "the disk quota is used up; free space or point the output elsewhere"


def describe_os_error(exc: OSError) -> str:
    """The OS's reason for ``exc`` plus a hint for the common cases (no path)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno) if exc.errno is not None else None
    return f"{reason} ({hint})" if hint else reason


def _is_environment_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


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
    """Call ``fn`` with logging configured; user errors exit 2 with a single clear line.

    So do OSErrors of the environment (:data:`ENVIRONMENT_ERRNOS`: a full disk, an unwritable or
    missing folder ...): ``error: <path>: <reason> (<hint>)``, never a traceback.
    """
    setup_logging()
    try:
        return fn()
    except user_error_types() as exc:
        fail(" ".join(str(exc).split("\n")))
    except OSError as exc:
        if not _is_environment_error(exc):
            raise
        path = exc.filename if exc.filename is not None else "(unknown path)"
        fail(f"{path}: {describe_os_error(exc)}")
