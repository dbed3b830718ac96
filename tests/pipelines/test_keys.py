"""Salted keys: stable, salt-dependent, vectorised form equal to the scalar one."""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd
import pytest

from pipelines.keys import KEY_CHARS, get_salt, make_key, make_keys


@pytest.mark.parametrize("salt", [b"s", b"x" * 64, b"long" * 40, bytes(range(256))])
def test_make_keys_equals_make_key(salt):
    values = pd.Series([f"chexpert:patient{i % 7}" for i in range(50)] + ["é-ünïcode", ""])
    got = make_keys("patient", values, salt)
    assert list(got) == [make_key("patient", v, salt) for v in values]
    assert len(make_keys("image", pd.Series([], dtype=str), salt)) == 0


def test_key_is_hmac_sha256_of_kind_and_value():
    want = hmac.new(b"k", b"study:abc", hashlib.sha256).hexdigest()[:KEY_CHARS]
    assert make_key("study", "abc", b"k") == want
    assert make_key("study", "abc", b"other") != want
    assert make_key("patient", "abc", b"k") != want


def test_salt_file_created_once_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_SALT", raising=False)
    monkeypatch.setenv("CXR_SALT_FILE", str(tmp_path / "salt"))
    first = get_salt()
    assert len(first) == 64
    assert (tmp_path / "salt").stat().st_mode & 0o077 == 0
    assert get_salt() == first
    monkeypatch.setenv("CXR_SALT", "from-env")
    assert get_salt() == b"from-env"
