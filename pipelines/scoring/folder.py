"""Folder mode of ``cxr score`` for sites without DICOMweb: a watched folder in, a folder out.

The same interface as :class:`pipelines.scoring.dicomweb.DicomWebStore`: studies are the
DICOM files of ``IN`` (searched recursively) grouped by StudyInstanceUID, and the SRs are
written to ``OUT`` under predict's PHI-free names; "already there" is an SR in ``OUT`` with the
same SOP Instance UID.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

from pydicom.errors import InvalidDicomError

from pipelines.dicom.header import quiet, read_header, text
from pipelines.scoring.reasons import PacsError


def _uids(path: Path, *keywords: str) -> tuple[str, ...] | None:
    with quiet():
        try:
            ds = read_header(path, keywords)
        except (InvalidDicomError, EOFError, OSError, ValueError):
            return None
    return tuple(text(ds, k) for k in keywords)


class FolderStore:
    """DICOM files of ``inp`` by study; SRs into ``out``."""

    def __init__(self, inp: str | Path, out: str | Path) -> None:
        self.inp, self.out = Path(inp), Path(out)
        self._studies: dict[str, list[Path]] = {}
        self._stored: set[str] | None = None

    def check(self) -> None:
        """Raises PacsError: the watched folder does not exist."""
        if not self.inp.is_dir():
            raise PacsError(f"{self.inp}: the folder to score does not exist")

    def find(self, since: date | None) -> list[str]:
        """The StudyInstanceUIDs of the folder (``since`` is ignored: SRs in OUT make a rerun
        a no-op)."""
        self._studies = {}
        for path in sorted(p for p in self.inp.rglob("*") if p.is_file()):
            uids = _uids(path, "StudyInstanceUID")
            if uids and uids[0]:
                self._studies.setdefault(uids[0], []).append(path)
        return sorted(self._studies)

    def retrieve(self, study_uid: str, folder: Path) -> int:
        """Copy the study's files into ``folder``; their number."""
        folder.mkdir(parents=True, exist_ok=True)
        files = self._studies.get(study_uid, [])
        for n, path in enumerate(files):
            shutil.copyfile(path, folder / f"{n:05d}.dcm")
        return len(files)

    def _index(self) -> set[str]:
        if self._stored is None:
            found = (_uids(p, "SOPInstanceUID") for p in self.out.glob("*.dcm"))
            self._stored = {u[0] for u in found if u}
        return self._stored

    def has_instance(self, study_uid: str, sop_uid: str) -> bool:
        """Whether ``OUT`` holds the instance."""
        return sop_uid in self._index()

    def store(self, files: list[Path]) -> None:
        """Copy the files into ``OUT``."""
        self.out.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copyfile(path, self.out / path.name)
            uids = _uids(path, "SOPInstanceUID")
            if uids:
                self._index().add(uids[0])
