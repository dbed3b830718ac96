"""cxr-dag: stage logic for the chest X-ray pipeline (no Prefect imports here).

The stages run as ``python -m pipelines.<stage>`` (``dvc.yaml``), so ``dvc`` must find the
project's interpreter as ``python``: with the venv active that holds. ``.venv/bin/dvc repro``
without activating it starts the system ``python``, which lacks the packages: a stage started
that way re-runs itself with the repository's ``.venv/bin/python``, or says in one line what to
do when there is none (:func:`_check_interpreter`).
"""

__version__ = "0.1.0"


def _check_interpreter() -> None:
    import importlib.util
    import os
    import sys
    from pathlib import Path

    if all(importlib.util.find_spec(name) for name in ("numpy", "pandas", "pydantic")):
        return
    venv = Path(__file__).resolve().parents[1] / ".venv"
    python = venv / "bin" / "python"
    argv = list(getattr(sys, "orig_argv", []))
    as_stage = "-m" in argv[:-1]
    other_python = Path(sys.prefix).resolve() != venv.resolve()
    if as_stage and other_python and python.is_file():
        os.execv(str(python), [str(python), *argv[1:]])  # the stage, with the project's venv
    message = (
        f"this Python ({sys.executable}) lacks the project's packages; run `make install` and "
        "`source .venv/bin/activate` first (or `make demo`, which does both)"
    )
    if as_stage:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(message)


_check_interpreter()
