"""Every error the project raises on purpose, in one leaf module (it imports nothing of ours).

A :class:`UserError` is caused by the user's inputs, params or machine and is shown as one line
naming the file and the reason (:func:`pipelines.stage.run_stage` prints it and exits 2, without a
traceback). Every error type below is one, so a caller that wants "anything the user can fix"
catches ``UserError``; the second base of some types (``ValueError``, ``OSError``,
``FileNotFoundError``) keeps them catchable as what they also are.

Anything else that escapes a stage is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any


class UserError(Exception):
    """A failure caused by inputs, params or the machine, shown to the user as one line."""


class ConfigError(UserError, ValueError):
    """A params file is missing, malformed, or has a value of the wrong kind."""


class SourceError(UserError, ValueError):
    """An input as a whole cannot be read (names the file and the reason)."""


class MissingInputError(UserError, FileNotFoundError):
    """A stage's input (an upstream stage's output) does not exist; says which stage makes it."""


class SplitLeakError(UserError):
    """A patient would appear in two splits."""


class DecodeError(UserError):
    """An image file could not be turned into pixels.

    Attributes:
        path: the file (as given).
        reason: a stable code from :data:`pipelines.imaging.REASONS`.
        detail: a sentence for people; never contains PHI.
    """

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f": {detail}" if detail else ""))

    def __reduce__(self) -> tuple[Any, ...]:  # keeps the attributes across process pools
        return (type(self), (self.path, self.reason, self.detail))


class CheckpointError(UserError, ValueError):
    """A weights file or checkpoint that cannot be used (named in the message)."""


class ReportError(UserError, ValueError):
    """A predictions table cannot be evaluated (the message names the file and the reason)."""


class ExportError(UserError):
    """An export cannot be made or its inputs are missing (names the file and the reason)."""


class ParityError(ExportError):
    """An exported model disagrees with the eager model beyond the params tolerance."""


class PredictError(UserError):
    """The input, the model or its card cannot be used; the message says which and why."""


# --- the machine refusing: OSErrors shown as one line ----------------------------------------

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


def is_environment_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError of the machine refusing (:data:`ENVIRONMENT_ERRNOS`)."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


class OutputError(UserError, OSError):
    """An output could not be written (full disk, no permission, a file where a folder must be).

    Both a :class:`UserError` (a stage shows it as one line naming the output) and an
    :class:`OSError` (``errno`` and ``filename`` kept for callers that check them).
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {describe_os_error(self)}"
