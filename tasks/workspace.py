"""Which workspace a Prefect object belongs to, when one server serves several.

Artifact keys, Variable names and global concurrency limits are global on a Prefect server: two
checkouts served by one server would add versions to each other's evaluation table, share the
scoring watermark and wait on each other's runs. Every such name carries the workspace, by the
one rule here: ``cxr-<workspace>-<kind>`` (:func:`scoped`), e.g.
``cxr-3ba87b-5f2c1a-evaluate-auroc``.

A workspace is a checkout: its DVC outputs, its ``params.yaml``, its results. Its name is
``<repo>-<checkout>`` (:func:`workspace`):

- ``repo``: the first 6 hex digits of the repository's root commit: the same in every clone of
  the project and different for another project, so that one project's workspaces sort
  together in the UI; ``norepo`` outside git or before the first commit.
- ``checkout``: 6 random hex digits drawn once per checkout and kept in its git directory
  (``<git dir>/cxr-workspace``: per worktree, never committed, pushed or cloned). Two clones of
  the project, on one machine or two, and two worktrees of one clone, are two workspaces; a
  checkout keeps its name when it is moved or renamed. Outside git: a hash of the machine's id
  and the resolved path.

Not the git remote URL: it can carry a user name (``https://alice@host/...``, a fork under a
user's namespace), changes with the remote, and is the same in every clone. Not the path: it
usually carries a user name (``/home/alice/...``), and two machines' checkouts often share it
(``/srv/cxr-dag``). No name here shows either.

``CXR_WORKSPACE`` overrides the name (lowercase letters, digits and dashes; at most 40
characters): a readable name for a site's deployment, or one name on purpose for checkouts that
should share their histories and run one at a time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import socket
import subprocess
from pathlib import Path

from pipelines.errors import ConfigError

#: The environment variable that names the workspace instead of :func:`workspace`'s rule.
WORKSPACE_ENV = "CXR_WORKSPACE"
#: What Prefect accepts in an artifact key (and what every scoped name here is).
NAME = re.compile(r"^[a-z0-9-]+$")
#: The file, in the checkout's git directory, that holds its random part.
CHECKOUT_FILE = "cxr-workspace"

_OVERRIDE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")


def workspace(repo: str | Path = ".") -> str:
    """The workspace name of the checkout at ``repo`` (module docstring).

    Raises:
        ConfigError: ``CXR_WORKSPACE`` is set to a name Prefect would refuse.
    """
    override = os.environ.get(WORKSPACE_ENV, "").strip()
    if override:
        if not _OVERRIDE.match(override):
            raise ConfigError(
                f"{WORKSPACE_ENV}={override!r}: use lowercase letters, digits and dashes "
                "(at most 40 characters, not starting or ending with a dash)"
            )
        return override
    return _derived(str(Path(repo).resolve()))


def scoped(kind: str, repo: str | Path = ".") -> str:
    """The server-wide name of ``kind`` (e.g. ``evaluate-auroc``) for the workspace at ``repo``.

    Raises:
        ValueError: ``kind`` is not lowercase letters, digits and dashes.
        ConfigError: as :func:`workspace`.
    """
    if not NAME.match(kind):
        raise ValueError(f"a Prefect name part takes lowercase letters, digits and dashes: {kind}")
    return f"cxr-{workspace(repo)}-{kind}"


@functools.cache
def _derived(root: str) -> str:
    git_dir = _git(root, "rev-parse", "--absolute-git-dir")
    roots = (_git(root, "rev-list", "--max-parents=0", "HEAD") or "").split()
    repo_part = sorted(roots)[0][:6] if roots else "norepo"
    checkout = _checkout_id(Path(git_dir)) if git_dir else None
    if checkout is None:  # no git directory, or not writable: the machine and the path
        machine = _machine_id()
        checkout = hashlib.sha256(f"{machine}\0{root}".encode()).hexdigest()[:6]
    return f"{repo_part}-{checkout}"


def _git(root: str, *args: str) -> str | None:
    """git's one-line answer in ``root``; None when git is missing or says no."""
    try:
        done = subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _checkout_id(git_dir: Path) -> str | None:
    """The checkout's random part, drawn on first use; None where it cannot be kept.

    Written to a temporary file and linked into place, so that of two processes drawing at
    once both read the one that won.
    """
    path = git_dir / CHECKOUT_FILE
    found = _read_id(path)
    if found:
        return found
    draw = secrets.token_hex(3)
    tmp = git_dir / f"{CHECKOUT_FILE}.{os.getpid()}.{draw}"
    try:
        tmp.write_text(draw + "\n", encoding="ascii")
        try:
            os.link(tmp, path)  # atomic; fails when another process was first
        except FileExistsError:
            if not _read_id(path):  # a damaged file: replace it
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        return None
    return _read_id(path)


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if re.fullmatch(r"[0-9a-f]{6}", text) else None


def _machine_id() -> str:
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return Path(candidate).read_text(encoding="ascii").strip()
        except OSError:
            continue
    return socket.gethostname()
