"""pipelines.scoring without a PACS: retries, skip reasons, an untrained model, the folder store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from pipelines.errors import PredictError
from pipelines.evaluation.gate import reference_path
from pipelines.export import model_card
from pipelines.imaging import read_image
from pipelines.io import write_json
from pipelines.labels import FINDINGS
from pipelines.scoring import (
    REASONS,
    SCORED,
    SKIPPED,
    UNTRAINED_MODEL,
    FolderStore,
    PacsError,
    Scorer,
    reason_of,
    score_study,
    summarize,
    with_retries,
)
from pipelines.scoring.reasons import OUT_OF_DISTRIBUTION, UNGATED_MODEL
from pipelines.synthetic import write_dicom
from tests.pipelines.predict.test_gate import setup  # noqa: F401 (fixture)
from tests.pipelines.predict.test_run import model_dir, write_view  # noqa: F401 (fixture)


def _http(code: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = code
    return requests.HTTPError(f"{code} for url: /studies/1.2.3.4", response=response)


def test_transient_failures_are_retried_with_backoff_then_succeed(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("pipelines.scoring.dicomweb.time.sleep", waits.append)
    failures = [_http(503), requests.ConnectionError("refused /studies/1.2.3.4")]

    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert with_retries("retrieve", call, attempts=4, backoff_s=0.5) == "ok"
    assert waits == [0.5, 1.0]


def test_lasting_and_permanent_failures_are_one_line_without_the_url(monkeypatch):
    monkeypatch.setattr("pipelines.scoring.dicomweb.time.sleep", lambda s: None)

    def down():
        raise requests.ConnectionError("refused /studies/1.2.3.4")

    with pytest.raises(PacsError, match="retrieve failed after 3 tries: connection failed") as e:
        with_retries("retrieve", down, attempts=3, backoff_s=0)
    calls = []

    def forbidden():
        calls.append(1)
        raise _http(403)

    with pytest.raises(PacsError, match="store failed: HTTP 403") as e2:
        with_retries("store", forbidden, attempts=3, backoff_s=0)
    assert calls == [1]  # not retried
    assert "1.2.3.4" not in str(e.value) + str(e2.value)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("s: not a chest study: BodyPartExamined is KNEE", "not_chest"),
        ("s: no usable frontal view (PA or AP) among 1 radiograph(s)", "no_frontal"),
        ("a.dcm: cannot read the image: truncated", "decode_failure"),
        ("s: not a chest radiograph study: modality MR; predict accepts", "not_radiograph"),
        ("something new", "unscorable"),
    ],
)
def test_predicts_refusals_map_to_reason_codes(message, code):
    assert reason_of(PredictError(message)) == code
    assert code in REASONS or code == "unscorable"


def test_an_untrained_model_skips_every_study_with_its_reason(model_dir, tmp_path):  # noqa: F811
    untrained = tmp_path / "model"
    untrained.mkdir()
    shutil.copy(model_dir / "model.onnx", untrained / "model.onnx")
    card = model_card(
        meta={"findings": list(FINDINGS)},
        input_size=32,
        files={},
        parity={},
        parity_summary={},
        thresholds={"thresholds": {}},
        default_policy="youden",
        test_metrics=None,
        data_summary=None,
        n_params=0,
    )
    write_json(untrained / "metadata.json", card)
    write_view(tmp_path / "in" / "s" / "pa.dcm", "PA", seed=1)
    store = FolderStore(tmp_path / "in", tmp_path / "out")
    (uid,) = store.find(None)
    outcome = score_study(store, Scorer(untrained / "model.onnx"), uid)
    assert (outcome.status, outcome.reason) == (SKIPPED, UNTRAINED_MODEL)
    assert not (tmp_path / "out").exists()


def test_folder_store_scores_once_and_summarizes(model_dir, tmp_path):  # noqa: F811
    write_view(tmp_path / "in" / "a" / "pa.dcm", "PA", seed=1)
    write_view(tmp_path / "in" / "a" / "ll.dcm", "LL", seed=2)
    write_view(
        tmp_path / "in" / "b" / "knee.dcm",
        "PA",
        seed=3,
        study_uid="1.2.3.9",
        BodyPartExamined="KNEE",
    )
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    scorer = Scorer(model_dir / "model.onnx")
    store = FolderStore(tmp_path / "in", tmp_path / "out")
    outcomes = [score_study(store, scorer, uid) for uid in store.find(None)]
    assert sorted((o.status, o.reason) for o in outcomes) == [(SCORED, ""), (SKIPPED, "not_chest")]
    rerun = FolderStore(tmp_path / "in", tmp_path / "out")
    again = [score_study(rerun, scorer, uid) for uid in rerun.find(None)]
    assert sorted(o.status for o in again) == ["already there", SKIPPED]
    assert len(list(Path(tmp_path / "out").glob("sr-*.dcm"))) == 1
    summary = summarize(outcomes, found=2, search_s=0.01)
    assert (summary["scored"], summary["skipped_by_reason"]) == (1, {"not_chest": 1})
    assert summary["latency_s"]["p50"] > 0 and "decode+infer" in summary["seconds_by_step"]


def test_pixels_the_gate_refuses_and_a_model_without_a_gate_are_skipped_with_their_reason(
    setup,  # noqa: F811
    tmp_path,
):
    """A CT slice stored as a chest DX passes every header rule; the gate refuses its pixels."""
    ct = read_image(reference_path("pydicom.data", "test_files/CT_small.dcm"))
    for view in ("PA", "LL"):
        write_dicom(tmp_path / "in" / "ct" / f"{view}.dcm", ct, photometric="MONOCHROME2",
                    bits_stored=12, view_position=view, modality="DX",
                    uids={"StudyInstanceUID": "1.2.3.77", "SeriesInstanceUID": f"1.2.3.77.{view}",
                          "SOPInstanceUID": f"1.2.3.77.{view}.1"},
                    phi={"PatientID": "PHI-ID-77"})  # fmt: skip
    store = FolderStore(tmp_path / "in", tmp_path / "out")
    (uid,) = store.find(None)
    gated = score_study(store, Scorer(setup["gated"]), uid)
    assert (gated.status, gated.reason) == (SKIPPED, OUT_OF_DISTRIBUTION)
    bare = score_study(store, Scorer(setup["bare"]), uid)
    assert (bare.status, bare.reason) == (SKIPPED, UNGATED_MODEL)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
