"""A real Orthanc with its DICOMweb plugin for the tests and the benchmark (loopback, no auth).

Its storage and config live in a given folder, so it can be stopped and started again on the
same data (the "PACS down mid-run" test). :func:`orthanc_available` says whether the binary and
the plugin are installed (Debian: ``orthanc``, ``orthanc-dicomweb``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's shared library, if installed."""
    for folder in map(Path, PLUGIN_DIRS):
        found = sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def orthanc_available() -> bool:
    """Whether the Orthanc binary and its DICOMweb plugin are installed."""
    return shutil.which("Orthanc") is not None and dicomweb_plugin() is not None


class Orthanc:
    """One Orthanc on free loopback ports, its storage in ``home`` (HTTP basic ``users``, if
    given; :meth:`upload` and :meth:`count` then need them too, so tests use it unauthenticated)."""

    def __init__(self, home: Path, users: dict[str, str] | None = None) -> None:
        self.home = home
        self.port, self.dicom_port = _free_port(), _free_port()
        (home / "db").mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cxr-test",
            "StorageDirectory": str(home / "db"),
            "IndexDirectory": str(home / "db"),
            "HttpPort": self.port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (home / "orthanc.json").write_text(json.dumps(config))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 30) -> None:
        log = (self.home / "orthanc.log").open("ab")
        self.proc = subprocess.Popen(
            ["Orthanc", str(self.home / "orthanc.json")], stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=1):
                    return
            except urllib.error.HTTPError:  # 401: it answers, with authentication on
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited; see {self.home / 'orthanc.log'}") from None
                time.sleep(0.2)
        self.stop()  # never leave a server behind
        raise TimeoutError("Orthanc did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def upload(self, files: list[Path]) -> None:
        """REST ``POST /instances`` of each file."""
        for path in files:
            request = urllib.request.Request(
                f"{self.url}/instances", data=path.read_bytes(), method="POST"
            )
            request.add_header("Content-Type", "application/dicom")
            with urllib.request.urlopen(request, timeout=30) as resp:
                resp.read()

    def count(self, kind: str = "instances") -> int:
        with urllib.request.urlopen(f"{self.url}/{kind}", timeout=10) as resp:
            return len(json.loads(resp.read()))
