"""Child processes of the tasks: their environment, and running one with its output streamed.

Every command a task starts (``dvc repro``, ``dvc exp run``, ``python -m pipelines.<stage>``)
runs with :func:`child_env`: the running interpreter's ``bin`` first on ``PATH`` (dvc.yaml's
commands call ``python``, and DVC's queue workers call ``dvc``: both must be this venv's),
unbuffered Python output (lines reach the log as they are printed) and Prefect analytics off.

:func:`stream` runs a command, hands each output line (stdout and stderr merged) to a callback,
keeps the last lines for error messages and enforces a wall-clock limit. A helper thread reads
the output, so the limit holds while the child is silent, or while a process it detached (DVC's
queue worker) keeps the output open. The child runs in its own process group, so a timeout or
an error in the caller kills it together with what it started (a stage's ``python`` under
``dvc repro``), never leaving it running unobserved.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: The prefixes of an error line: the stages' ``error: ...`` (``run_stage``) and DVC's ``ERROR``.
ERROR_PREFIXES = ("error:", "ERROR")
TAIL_LINES = 40


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: this one's, with this venv first on ``PATH``.

    Args:
        extra: further variables (they win over the defaults).

    Returns:
        A new dict; ``os.environ`` is left unchanged.
    """
    venv_bin = str(Path(sys.executable).parent)
    return (
        dict(os.environ)
        | {
            "PYTHONUNBUFFERED": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
        }
        | dict(extra or {})
    )


@dataclass(frozen=True)
class ProcessResult:
    """How a streamed command ended.

    Attributes:
        returncode: the exit status (negative: killed by that signal).
        tail: its last output lines, trailing whitespace stripped.
    """

    returncode: int
    tail: tuple[str, ...]

    @property
    def output(self) -> str:
        """The tail as one text."""
        return "\n".join(self.tail)

    def error_lines(self, fallback: int = 5) -> list[str]:
        """The tail's error lines, or its last ``fallback`` lines when none says ``error``."""
        return [ln for ln in self.tail if ln.startswith(ERROR_PREFIXES)] or list(
            self.tail[-fallback:]
        )


def kill_group(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and its process group (it was started as a group leader); no-op if gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):  # gone, or not POSIX
        if proc.poll() is None:
            proc.kill()


def _read_lines(pipe: IO[str], lines: queue.SimpleQueue[str | None]) -> None:
    """Put each line of ``pipe`` on ``lines``, then None at its end."""
    try:
        for raw in pipe:
            lines.put(raw.rstrip())
    finally:
        pipe.close()
        lines.put(None)


def stream(
    cmd: Sequence[str],
    cwd: str | Path,
    on_line: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
    tail_lines: int = TAIL_LINES,
    label: str | None = None,
) -> ProcessResult:
    """Run ``cmd`` in ``cwd`` with :func:`child_env`, handing each output line to ``on_line``.

    Args:
        cmd: the program and its arguments.
        cwd: the working directory.
        on_line: called in this thread with each line (stdout and stderr merged, trailing
            whitespace stripped) in the order the child wrote them.
        timeout_s: wall-clock limit (``None`` or 0: none); applies while the child is silent, and
            while a process it left behind still holds its output open.
        tail_lines: how many of the last lines the result keeps.
        label: what the timeout message calls the command (default: its program).

    Returns:
        The exit status and the last lines; a non-zero exit is the caller's to judge.

    Raises:
        TimeoutError: the command ran past ``timeout_s`` (it was killed with its group).
        OSError: the program could not be started.
    """
    deadline = time.monotonic() + timeout_s if timeout_s else None
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a kill reaches what it started
    )
    assert proc.stdout is not None
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    tail: deque[str] = deque(maxlen=tail_lines)
    try:
        while (line := lines.get(timeout=_left(deadline))) is not None:
            tail.append(line)
            if on_line is not None:
                on_line(line)
            if deadline is not None and time.monotonic() > deadline:  # a child that never stops
                raise subprocess.TimeoutExpired(cmd, timeout_s or 0)
        code = proc.wait(timeout=_left(deadline))
    except (queue.Empty, subprocess.TimeoutExpired):
        kill_group(proc)
        proc.wait()
        name = label or Path(cmd[0]).name
        raise TimeoutError(f"{name} ran past its timeout of {timeout_s:.0f} s") from None
    except BaseException:  # the callback failed, or Ctrl-C: leave nothing running
        kill_group(proc)
        proc.wait()
        raise
    return ProcessResult(code, tuple(tail))


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (at least 0), or None without one."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def run_captured(cmd: Sequence[str], cwd: str | Path) -> subprocess.CompletedProcess:
    """Run a short command with :func:`child_env` and capture its stdout and stderr (text).

    Returns:
        The completed process (not raising on a non-zero exit).
    """
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=child_env())
