"""The ``cxr-score`` flow against a real Orthanc (DICOMweb plugin) on loopback.

The scenario test uploads studies of the embedded dataset (and the real CR, where present) with
planted PHI, a non-chest study and a lateral-only one, and checks: one SR per scorable study,
found through QIDO-RS, whose findings equal ``cxr predict``'s on the same files from disk; a
second run stores nothing; a study added later is scored by the third run; Orthanc stopped
mid-run fails the run in one line, and the next run completes (nothing lost, nothing doubled);
no planted value in any log, artifact or summary. Skipped where Orthanc or its plugin is absent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.sorting import FlowRunSort
from prefect.logging.handlers import APILogWorker
from prefect.variables import Variable
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from flows.cli import app
from flows.score import SKIPPED, WATERMARK, cxr_score
from pipelines.labels import FINDINGS
from pipelines.predict import predict
from pipelines.scoring import DicomWebStore, study_key
from pipelines.scoring.reasons import PacsError
from pipelines.synthetic.params import SynthesizeParams
from pipelines.synthetic.stage import synthesize
from tasks.score import STUDIES, SUMMARY
from tasks.workspace import scoped
from tests.conftest import REAL_CXR, ROOT, dicom_phi_values
from tests.orthanc import Orthanc, orthanc_available
from tests.pipelines.dicom_out.helpers import sr_findings
from tests.pipelines.predict.test_run import model_dir  # noqa: F401 (fixture)

needs_orthanc = pytest.mark.skipif(
    not orthanc_available(), reason="Orthanc and its DICOMweb plugin are not installed"
)
PLANTED = {
    "PatientName": "PLANTED^PATIENTNAME",
    "PatientID": "PHI-ID-4417",
    "AccessionNumber": "ACC-PLANTED-55",
    "InstitutionName": "PLANTED GENERAL HOSPITAL",
}


def _planted(src: Path, dst: Path, study_uid: str | None = None, **values: str) -> Path:
    """A copy of ``src`` with the planted PHI (and a new study, if ``study_uid``)."""
    ds = pydicom.dcmread(src)
    for keyword, value in (PLANTED | values).items():
        setattr(ds, keyword, value)
    if study_uid:
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, str(ds.SeriesInstanceUID)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[study_uid, str(ds.SOPInstanceUID)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _study_uid(folder: Path) -> str:
    return str(
        pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    )


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Path]:
    """Study folders to upload (one folder per study): the embedded ones, the real CR, the bad
    ones and two added later (StudyDate today), all with planted PHI."""
    root = tmp_path_factory.mktemp("score-studies")
    synthesize(
        SynthesizeParams(out=root / "syn", studies=3, size=64, lateral_missing=0.0, workers=1)
    )
    src = sorted(p for p in (root / "syn" / "dicom").glob("*/*") if p.is_dir())
    up = root / "upload"
    out: dict[str, Path] = {}
    for n, folder in enumerate(src):
        for f in sorted(folder.glob("*.dcm")):
            _planted(f, up / f"syn{n}" / f.name)
        out[f"syn{n}"] = up / f"syn{n}"
    if (REAL_CXR / "dicom").is_dir():
        (real,) = (REAL_CXR / "dicom").glob("*.dcm")
        out["real"] = _planted(real, up / "real" / "cr.dcm").parent
    first = sorted(src[0].glob("*.dcm"))
    knee = generate_uid(entropy_srcs=["knee"])
    out["knee"] = _planted(first[0], up / "knee" / "a.dcm", knee, BodyPartExamined="KNEE").parent
    today = datetime.now(timezone.utc).strftime("%Y%m%d")
    for name in ("later", "later2", "later3"):
        uid = generate_uid(entropy_srcs=[name])
        for f in first:
            _planted(f, up / name / f.name, uid, StudyDate=today)
        out[name] = up / name
    lateral = [
        f for f in first if pydicom.dcmread(f).get("ViewPosition") in ("LL", "RL", "LATERAL")
    ]
    uid = generate_uid(entropy_srcs=["lateral-only"])
    out["lat_only"] = _planted(lateral[0], up / "lat" / "a.dcm", uid).parent
    return out


@pytest.fixture
def fresh_state(prefect_harness) -> None:
    """No watermark and no skipped record from an earlier test of the session's server."""
    for kind in (WATERMARK, SKIPPED):
        Variable.unset(scoped(kind))


def _srs(client: DICOMwebClient, study_uid: str) -> list[dict]:
    return client.search_for_instances(
        study_instance_uid=study_uid, search_filters={"Modality": "SR"}
    )


def _assert_sr_equals_predict(client, folder: Path, model: Path, tmp: Path) -> None:
    (sr,) = _srs(client, _study_uid(folder))
    ds = client.retrieve_instance(
        _study_uid(folder), sr["0020000E"]["Value"][0], sr["00080018"]["Value"][0]
    )
    ds.save_as(tmp / "sr.dcm", enforce_file_format=True)
    found = sr_findings(tmp / "sr.dcm")
    table = predict(folder, model=model)
    assert list(found) == list(FINDINGS)
    for row in table.itertuples():
        evaluation, probability = found[row.finding]
        assert probability == pytest.approx(row.probability, abs=1e-6)
        assert evaluation == ("Present" if row.positive else "Absent")


def _run(url: str, model: Path, **kw) -> dict:
    return cxr_score(dicomweb=url, model=str(model), attempts=2, backoff_s=0.1, **kw)


async def _logs_and_artifacts() -> str:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="")),
            sort=FlowRunSort.START_TIME_DESC,
        )
        ids = [r.id for r in runs]
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            LogFilter,
            LogFilterFlowRunId,
        )

        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
        tasks = await client.read_task_runs()
    text = [r.name for r in runs] + [json.dumps(r.parameters) for r in runs]
    text += [log.message for log in logs] + [json.dumps(a.data, default=str) for a in artifacts]
    text += [t.name for t in tasks]
    assert {scoped(SUMMARY), scoped(STUDIES)} <= {a.key for a in artifacts}  # this workspace's
    return "\n".join(text)


@needs_orthanc
@pytest.mark.slow
def test_scores_each_study_once_and_survives_a_pacs_outage(
    fresh_state,
    studies,
    model_dir,  # noqa: F811
    tmp_path,
    caplog,
    monkeypatch,
):
    caplog.set_level(logging.INFO)  # DEBUG: HTTP clients log URLs (UIDs)
    model = model_dir / "model.onnx"
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    try:
        initial = [k for k in studies if not k.startswith("later")]
        pacs.upload([f for k in initial for f in sorted(studies[k].rglob("*.dcm"))])
        client = DICOMwebClient(pacs.dicomweb)
        scorable = [k for k in initial if k not in ("knee", "lat_only")]

        first = _run(pacs.dicomweb, model)
        assert first["found"] == len(initial)
        assert first["scored"] == first["stored"] == len(scorable)
        assert first["skipped_by_reason"] == {"no_frontal": 1, "not_chest": 1}
        for k in scorable:
            _assert_sr_equals_predict(client, studies[k], model, tmp_path)
        for k in ("knee", "lat_only"):
            assert not _srs(client, _study_uid(studies[k]))
        assert Variable.get(scoped(WATERMARK)) == datetime.now(timezone.utc).date().isoformat()
        skipped = Variable.get(scoped(SKIPPED))
        assert {v for v in skipped.values()} == {"no_frontal", "not_chest"}
        instances = pacs.count()

        # two overlapping runs could both store an SR: the PACS keeps one per SOP Instance UID
        (sr,) = _srs(client, _study_uid(studies["syn0"]))
        again = client.retrieve_instance(
            _study_uid(studies["syn0"]), sr["0020000E"]["Value"][0], sr["00080018"]["Value"][0]
        )
        client.store_instances([again])
        assert pacs.count() == instances

        second = _run(pacs.dicomweb, model, lookback_days=100000)  # finds them all again
        assert (second["stored"], second["already_there"]) == (0, len(scorable))
        assert second["skipped"] == 2 and pacs.count() == instances

        pacs.upload(sorted(studies["later"].glob("*.dcm")))
        third = _run(pacs.dicomweb, model)
        assert (third["found"], third["stored"]) == (1, 1)  # StudyDate search from the watermark
        _assert_sr_equals_predict(client, studies["later"], model, tmp_path)

        # Orthanc stops after the first SR of this run is stored: the run fails in one line
        pacs.upload([f for k in ("later2", "later3") for f in sorted(studies[k].glob("*.dcm"))])
        original = DicomWebStore.store

        def store_then_stop(self, files):
            original(self, files)
            pacs.stop()

        monkeypatch.setattr(DicomWebStore, "store", store_then_stop)
        with pytest.raises(PacsError, match="failed after 2 tries: connection failed") as err:
            _run(pacs.dicomweb, model)
        assert "\n" not in str(err.value)
        monkeypatch.setattr(DicomWebStore, "store", original)
        pacs.start()
        last = _run(pacs.dicomweb, model)
        assert (last["stored"], last["already_there"]) == (1, 2)
        for k in ("later", "later2", "later3", *scorable):
            assert len(_srs(client, _study_uid(studies[k]))) == 1, k

        APILogWorker.drain_all(timeout=5)
        phi = dicom_phi_values(studies["syn0"].parent) | set(PLANTED.values())
        for where, seen in (
            ("prefect", asyncio.run(_logs_and_artifacts())),
            ("logs", caplog.text),
            ("summaries", json.dumps([first, second, third, last])),
        ):
            leaked = sorted(v for v in phi if v in seen)
            lines = [ln for ln in seen.splitlines() if any(v in ln for v in leaked)][:3]
            assert not leaked, (where, lines)
        assert study_key(_study_uid(studies["later"])) in caplog.text  # keys are what it shows
    finally:
        pacs.stop()


@needs_orthanc
def test_wrong_url_and_missing_root_fail_at_once_in_one_line(prefect_harness, model_dir, tmp_path):  # noqa: F811
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    try:
        model = str(model_dir / "model.onnx")
        for url, what in ((f"{pacs.url}/not-dicomweb", "HTTP 404, not a DICOMweb root"),):
            result = CliRunner().invoke(
                app, ["score", "--once", "--dicomweb", url, "--model", model]
            )
            assert result.exit_code == 2, result.output
            assert what in result.output and result.output.count("error:") == 1
    finally:
        pacs.stop()
    result = CliRunner().invoke(
        app, ["score", "--once", "--dicomweb", pacs.dicomweb, "--model", model]
    )  # stopped: connection refused, no retries before the first search
    assert result.exit_code == 2
    assert "cannot reach the DICOMweb server" in result.output


@needs_orthanc
def test_folder_mode_writes_one_sr_per_study_and_reruns_write_nothing(
    prefect_harness,
    studies,
    model_dir,  # noqa: F811
    tmp_path,
):
    inp = tmp_path / "in"
    for k in ("syn0", "knee"):
        shutil.copytree(studies[k], inp / k)
    out = tmp_path / "out"
    args = ["score", "--once", "--folder", str(inp), "--out", str(out)]
    args += ["--model", str(model_dir / "model.onnx")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert (summary["stored"], summary["skipped_by_reason"]) == (1, {"not_chest": 1})
    (sr,) = out.glob("sr-*.dcm")
    assert study_key(_study_uid(studies["syn0"])) in sr.name
    rerun = CliRunner().invoke(app, args).stdout
    again = json.loads(rerun[rerun.index("{") :])
    assert (again["stored"], again["already_there"]) == (0, 1)
    assert len(list(out.glob("*.dcm"))) == 1


def test_the_score_deployment_takes_its_schedule_and_options_from_params_yaml():
    from flows.score import build_score_deployment
    from pipelines.config import load_section
    from pipelines.scoring import ScoreParams

    cfg = load_section(ScoreParams, "score", ROOT / "params.yaml")
    deployment = build_score_deployment(cfg)
    assert deployment.name == cfg.deployment and deployment.paused == cfg.paused
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == cfg.cron
    assert deployment.parameters["dicomweb"] == cfg.dicomweb
    assert deployment.parameters["model"] == str(Path(cfg.model).resolve())
    assert deployment.parameters["attempts"] == cfg.attempts


@needs_orthanc
def test_credentials_come_from_the_environment(fresh_state, model_dir, tmp_path, monkeypatch):  # noqa: F811
    pacs = Orthanc(tmp_path / "orthanc", users={"cxr-score": "not-a-real-secret"})
    pacs.start()
    try:
        args = ["score", "--once", "--dicomweb", pacs.dicomweb]
        args += ["--model", str(model_dir / "model.onnx")]
        monkeypatch.delenv("CXR_DICOMWEB_USER", raising=False)
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 2 and "HTTP 401, credentials refused" in refused.output
        monkeypatch.setenv("CXR_DICOMWEB_USER", "cxr-score")
        monkeypatch.setenv("CXR_DICOMWEB_PASSWORD", "not-a-real-secret")
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout[result.stdout.index("{") :])["found"] == 0
        assert "not-a-real-secret" not in result.output
    finally:
        pacs.stop()
