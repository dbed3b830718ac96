"""Pseudonymous keys: salted hashes of patient / study / image identifiers.

The salt never enters an output. The secret salt (real data) comes from the ``CXR_SALT``
environment variable, else from the file named by ``CXR_SALT_FILE`` (default ``.cxr/salt``,
git-ignored), which is created with a random secret on first use. Set ``CXR_SALT`` (or share the
salt file out of band) when several machines must produce the same keys.

The embedded synthetic dataset has fake identities, so the demo uses a public, fixed salt
(:data:`DEMO_SALT`): every clone then writes the same keys, files and ``dvc.lock``. Ingest refuses
it for anything but the synthetic dataset. Either way the split does not depend on the salt
(:func:`pipelines.split.patient_order`): the salt protects identities, it does not decide results.
A salt is named in outputs only by its :func:`salt_fingerprint`, so a changed salt shows.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

SALT_ENV = "CXR_SALT"
SALT_FILE_ENV = "CXR_SALT_FILE"
DEFAULT_SALT_FILE = Path(".cxr/salt")
KEY_CHARS = 16


#: The public salt of the embedded synthetic dataset (fake identities only).
DEMO_SALT = b"cxr-dag demo salt: public, for the embedded synthetic dataset only"
#: The Manufacturer (0008,0070) of every synthetic DICOM file: how ingest recognises the
#: synthetic dataset before it accepts the demo salt.
SYNTHETIC_MANUFACTURER = "cxr-dag synthetic"


def salt_fingerprint(salt: bytes) -> str:
    """12 hex digits that tell salts apart without revealing them (a one-way hash)."""
    return hashlib.sha256(b"cxr-dag salt fingerprint\0" + salt).hexdigest()[:12]


def get_salt(mode: str = "secret") -> bytes:
    """The salt of ``mode``: ``secret`` (created on first use) or ``demo`` (:data:`DEMO_SALT`)."""
    if mode == "demo":
        return DEMO_SALT
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode()
    path = Path(os.environ.get(SALT_FILE_ENV, DEFAULT_SALT_FILE))
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def make_key(kind: str, value: str, salt: bytes | None = None) -> str:
    """HMAC-SHA256 of ``kind:value`` under the salt, shortened to 16 hex characters."""
    salt = get_salt() if salt is None else salt
    return hmac.new(salt, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:KEY_CHARS]


def make_keys(
    kind: str, values: Iterable[str] | pd.Series, salt: bytes | None = None
) -> np.ndarray:
    """:func:`make_key` over many values, as an object array (each distinct value hashed once).

    The HMAC is keyed once and copied per value: re-keying on every call dominated ingest time
    at 200k rows.
    """
    salt = get_salt() if salt is None else salt
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    codes, uniques = pd.factorize(series.astype(str), use_na_sentinel=False)
    keyed = hmac.new(salt, f"{kind}:".encode(), hashlib.sha256)

    def one(value: str) -> str:
        h = keyed.copy()
        h.update(value.encode())
        return h.hexdigest()[:KEY_CHARS]

    hashed = np.array([one(v) for v in uniques], dtype=object)
    return hashed[codes] if len(hashed) else np.empty(0, dtype=object)
