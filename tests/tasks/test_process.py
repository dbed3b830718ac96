"""Child processes: their environment, lines streamed in order, the tail, timeouts that kill."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tasks.process import ProcessResult, child_env, run_captured, stream


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan waits for init to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:  # gone meanwhile (without /proc: trust os.kill)
        return not Path("/proc").is_dir()
    return state != "Z"


def test_child_env_puts_this_venv_first_and_leaves_os_environ_alone():
    before = dict(os.environ)
    env = child_env({"EXTRA": "1"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["EXTRA"] == "1"
    assert dict(os.environ) == before


def test_lines_stream_in_order_stdout_and_stderr_merged(tmp_path):
    seen: list[str] = []
    code = (
        "import sys\n"
        "print('one')\n"
        "print('two  ', file=sys.stderr)\n"
        "print('three')\n"
        "import os; print(os.getcwd())\n"
    )
    result = stream(python(code), tmp_path, on_line=seen.append)
    assert seen == ["one", "two", "three", str(tmp_path)]
    assert result == ProcessResult(0, ("one", "two", "three", str(tmp_path)))


def test_the_tail_keeps_the_last_lines_and_the_exit_code(tmp_path):
    code = "import sys\nfor i in range(100): print(i)\nprint('error: bad column')\nsys.exit(3)\n"
    result = stream(python(code), tmp_path, tail_lines=10)
    assert result.returncode == 3
    assert result.tail == (*map(str, range(91, 100)), "error: bad column")
    assert result.output.endswith("99\nerror: bad column")
    assert result.error_lines() == ["error: bad column"]
    assert ProcessResult(1, ("a", "b", "c")).error_lines(fallback=2) == ["b", "c"]


def test_a_timeout_kills_the_child_and_what_it_started_even_when_silent(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # the child starts a grandchild (as dvc starts a stage), reports its pid, then says nothing
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    seen: list[str] = []
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^sleeper ran past its timeout of 2 s$"):
        stream(python(code), tmp_path, on_line=seen.append, timeout_s=2, label="sleeper")
    assert time.monotonic() - start < 20
    assert seen == ["started"]
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)


def test_the_timeout_holds_while_a_detached_process_keeps_the_output_open(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    # like DVC's queue worker: its own session, so the child's group kill does not reach it
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('detached', flush=True)\n"
    )
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match="ran past its timeout of 2 s"):
            stream(python(code), tmp_path, timeout_s=2)
        assert time.monotonic() - start < 20
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_an_error_in_the_callback_kills_the_child(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "print('first', flush=True)\ntime.sleep(60)\n"
    )

    def refuse(line: str) -> None:
        raise RuntimeError(f"cannot log {line}")

    with pytest.raises(RuntimeError, match="cannot log first"):
        stream(python(code), tmp_path, on_line=refuse)
    assert not alive(int(pid_file.read_text()))  # killed and reaped before the error came back


def test_the_timeout_holds_against_a_child_that_never_stops_talking(tmp_path):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="ran past its timeout of 1 s"):
        stream(python("while True: print('still here', flush=True)"), tmp_path, timeout_s=1)
    assert time.monotonic() - start < 20


def test_a_fast_command_is_not_timed_out(tmp_path):
    assert stream(python("print('ok')"), tmp_path, timeout_s=30).returncode == 0


def test_a_missing_program_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        stream([str(tmp_path / "no-such-program")], tmp_path)


def test_run_captured_keeps_stdout_and_stderr_apart(tmp_path):
    proc = run_captured(python("import sys; print('out'); sys.exit('err')"), tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "out\n", "err\n")
