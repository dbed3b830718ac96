"""The PACS side of ``cxr score``: QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Through ``dicomweb-client``. Every call goes through :func:`with_retries`: a transient failure
(connection refused or reset, a timeout, HTTP 5xx or 429) is retried with exponential back-off;
anything else, and a failure left after the last try, is a :class:`PacsError` of one line that
names the step and the kind of failure, never a URL (they hold Study Instance UIDs).
:meth:`DicomWebStore.check` probes the root once first, so a wrong URL or refused credentials
fail at once without retries.

Credentials come from the environment, never from params.yaml: ``CXR_DICOMWEB_TOKEN`` (a bearer
token) or ``CXR_DICOMWEB_USER`` + ``CXR_DICOMWEB_PASSWORD`` (HTTP basic).

Orthanc (and QIDO-RS in general) cannot search by the time a study was *received*; the search
is by StudyDate from ``since`` (a date), and :mod:`pipelines.scoring.run`'s idempotency makes a
study found twice harmless.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TypeVar

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from pipelines.scoring.reasons import PacsError

log = logging.getLogger(__name__)
T = TypeVar("T")

RADIOGRAPH_FILTER = "CR,DX"  # QIDO-RS: a comma lists the values ModalitiesInStudy may match
STUDY_UID, SOP_UID = "0020000D", "00080018"
#: WADO-RS in the stored transfer syntax: no transcoding by the server, so the pixels are
#: decoded by predict's own decoders, as from disk (a server's JPEG decoder may differ slightly)
ORIGINAL = (("application/dicom", "*"),)


def _transient(exc: Exception) -> bool:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


def _kind(exc: Exception) -> str:
    """The failure in words, without the URL (which may hold UIDs)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed (refused, reset or unreachable)"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__


def with_retries(step: str, call: Callable[[], T], attempts: int, backoff_s: float) -> T:
    """``call()``, retried on transient failures with back-off ``backoff_s * 2**n``.

    Raises:
        PacsError: a failure that is not transient, or still failing after ``attempts`` tries.
    """
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return call()
        except (requests.RequestException, OSError) as exc:
            if not _transient(exc) or attempt == attempts:
                tries = f" after {attempt} tries" if attempt > 1 else ""
                raise PacsError(f"DICOMweb {step} failed{tries}: {_kind(exc)}") from None
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("DICOMweb %s: %s; retry %d in %.1f s", step, _kind(exc), attempt, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _session() -> requests.Session:
    session = requests.Session()
    token = os.environ.get("CXR_DICOMWEB_TOKEN")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif os.environ.get("CXR_DICOMWEB_USER"):
        session.auth = (
            os.environ["CXR_DICOMWEB_USER"],
            os.environ.get("CXR_DICOMWEB_PASSWORD", ""),
        )
    return session


class DicomWebStore:
    """A DICOMweb root (e.g. ``http://127.0.0.1:8042/dicom-web``) with retried calls."""

    def __init__(self, url: str, attempts: int = 4, backoff_s: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.client = DICOMwebClient(self.url, session=_session(), timeout=(5, 120))
        self.client.set_http_retry_params(retry=False)  # with_retries covers 5xx and connections
        # dicomweb-client logs each search and retrieve with its Study Instance UID at INFO
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

    def _call(self, step: str, call: Callable[[], T]) -> T:
        return with_retries(step, call, self.attempts, self.backoff_s)

    def check(self) -> None:
        """One probe of the root: fail at once (no retries) on a wrong URL or credentials.

        Raises:
            PacsError: unreachable, not a DICOMweb root (404), or credentials refused (401/403).
        """
        try:
            self.client.search_for_studies(limit=1)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            why = {401: "credentials refused", 403: "access forbidden", 404: "not a DICOMweb root"}
            raise PacsError(
                f"{self.url}: HTTP {code}, {why.get(code, 'the server refused the search')} "
                "(check the URL and CXR_DICOMWEB_USER / CXR_DICOMWEB_PASSWORD / CXR_DICOMWEB_TOKEN)"
            ) from None
        except (requests.RequestException, OSError) as exc:
            raise PacsError(f"{self.url}: cannot reach the DICOMweb server: {_kind(exc)}") from None

    def find(self, since: date | None) -> list[str]:
        """Study Instance UIDs of CR / DX studies with a StudyDate from ``since`` (None: all)."""
        filters = {"ModalitiesInStudy": RADIOGRAPH_FILTER}
        if since is not None:
            filters["StudyDate"] = f"{since:%Y%m%d}-"
        found = self._call("search", lambda: self.client.search_for_studies(search_filters=filters))
        return sorted({str(s[STUDY_UID]["Value"][0]) for s in found if STUDY_UID in s})

    def retrieve(self, study_uid: str, folder: Path) -> int:
        """Write the study's instances into ``folder``; their number."""
        datasets = self._call(
            "retrieve", lambda: self.client.retrieve_study(study_uid, media_types=ORIGINAL)
        )
        folder.mkdir(parents=True, exist_ok=True)
        for n, ds in enumerate(datasets):
            ds.save_as(folder / f"{n:05d}.dcm", enforce_file_format=True)
        return len(datasets)

    def has_instance(self, study_uid: str, sop_uid: str) -> bool:
        """Whether the study holds the instance ``sop_uid`` (QIDO-RS)."""
        found = self._call(
            "search",
            lambda: self.client.search_for_instances(
                study_instance_uid=study_uid, search_filters={"SOPInstanceUID": sop_uid}
            ),
        )
        return any(SOP_UID in i and i[SOP_UID]["Value"][0] == sop_uid for i in found)

    def store(self, files: list[Path]) -> None:
        """STOW-RS the files into their study."""
        datasets = [pydicom.dcmread(f) for f in files]
        self._call("store", lambda: self.client.store_instances(datasets))
