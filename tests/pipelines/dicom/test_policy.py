"""What a usable chest radiograph is: one rule each, the same in ingest, predict and the decoder."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    generate_uid,
)

from pipelines.dicom.header import HEADER_TAGS, read_header
from pipelines.dicom.policy import (
    ACCEPTED_MODALITIES,
    RADIOGRAPH_MODALITIES,
    for_processing,
    is_chest,
    is_decodable_photometric,
    is_single_frame,
    non_chest_part,
)
from pipelines.errors import DecodeError, PredictError
from pipelines.imaging import read_image
from pipelines.predict import collect_studies, find_study_views
from pipelines.sources.dicom import read
from tests.pipelines.sources.test_dicom import make_ds, opts, pixels, reasons, write

# BodyPartExamined -> refused (ingest: not_chest; predict: "not a chest study")
BODY_PARTS: dict[str, bool] = {
    "": False,
    "CHEST": False,
    "PORT CHEST": False,
    "THORAX": False,
    "PORTABLE": False,
    "UNKNOWN": False,
    "TX": False,
    "ABDOMEN": True,
    "KNEE": True,
    "CHEST ABDOMEN": False,
}


@pytest.mark.parametrize(
    ("body_part", "word"),
    [
        ("", ""),
        ("chest", ""),
        ("Thorax", ""),
        ("TORAX", ""),
        ("LUNGS", ""),
        ("CHEST ABDOMEN", ""),
        ("ABDOMEN CHEST", ""),
        ("PORTABLE", ""),
        ("TX", ""),
        ("UNKNOWN", ""),
        ("KNEE", "KNEE"),
        ("left knee", "KNEE"),
        ("L SPINE", "SPINE"),
        ("LSPINE", "LSPINE"),
        ("SKULL/HEAD", "HEAD"),  # the first known word, alphabetically
    ],
)
def test_non_chest_part(body_part: str, word: str) -> None:
    assert non_chest_part(body_part) == word
    assert is_chest(body_part) == (word == "")


def test_body_part_rule_ingest_and_predict_agree(tmp_path: Path) -> None:
    """Ingest rejects (not_chest) exactly the studies that cxr predict refuses."""
    for i, part in enumerate(BODY_PARTS):
        ds = make_ds(f"1.2.3.{i}", BodyPartExamined=part, study=f"1.2.9.{i}")
        write(ds, tmp_path / "ingest" / f"{i}.dcm")
        write(ds, tmp_path / "predict" / str(i) / "pa.dcm")
    ingest = reasons(read(tmp_path / "ingest", opts()))
    for i, (part, refused) in enumerate(BODY_PARTS.items()):
        by_ingest = ingest.get(f"{i}.dcm") == "not_chest"
        try:
            find_study_views(tmp_path / "predict" / str(i))
            by_predict = False
        except PredictError as exc:
            assert "not a chest study" in str(exc)
            by_predict = True
        assert by_ingest == by_predict == refused, part
    assert set(ingest.values()) == {"not_chest"}  # no other reason in this table


def test_chest_body_parts_are_accepted(tmp_path: Path) -> None:
    for i, part in enumerate(["CHEST", "THORAX", "TORAX", "PORT CHEST", "", "UNKNOWN"]):
        write(make_ds(f"1.2.3.{i}", BodyPartExamined=part), tmp_path / f"{i}.dcm")
    result = read(tmp_path, opts())
    assert len(result.manifest) == 6 and result.rejected == []


def test_radiograph_modalities_follow_ingest() -> None:
    assert {"CR", "DX", "DR"} == ACCEPTED_MODALITIES
    assert ACCEPTED_MODALITIES | {""} == RADIOGRAPH_MODALITIES


@pytest.mark.parametrize(
    ("photometric", "decodable"),
    [
        ("MONOCHROME1", True),
        ("MONOCHROME2", True),
        ("RGB", True),
        ("YBR_FULL_422", True),
        ("PALETTE COLOR", False),
        ("", False),
    ],
)
def test_decodable_photometric(photometric: str, decodable: bool) -> None:
    assert is_decodable_photometric(photometric) == decodable


def test_ingest_rejects_what_the_decoder_refuses(tmp_path: Path) -> None:
    """Photometric and frame rules: ingest's reason is the decoder's reason."""
    palette = make_ds("1.2.3.50", PhotometricInterpretation="PALETTE COLOR")
    write(palette, tmp_path / "palette.dcm")
    multi = make_ds("1.2.3.51", pixel_data=False, NumberOfFrames=2)
    multi.PixelData = np.concatenate([pixels(1), pixels(2)]).tobytes()
    write(multi, tmp_path / "multi.dcm")
    write(make_ds("1.2.3.52"), tmp_path / "ok.dcm")
    ingest = reasons(read(tmp_path, opts()))
    assert ingest == {"palette.dcm": "unsupported_photometric", "multi.dcm": "multi_frame"}
    for name, reason in ingest.items():
        with pytest.raises(DecodeError) as err:
            read_image(tmp_path / name)
        assert err.value.reason == reason
    assert read_image(tmp_path / "ok.dcm").shape == (16, 16)
    assert is_single_frame(1) and is_single_frame(0) and not is_single_frame(2)


def test_private_transfer_syntax_is_named(tmp_path: Path) -> None:
    ds = make_ds("1.2.3.600", syntax="1.2.3.4.5.6.7", pixel_data=False)  # a private syntax
    ds.PixelData = encapsulate([b"opaque" * 8])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "x.dcm", implicit_vr=False, little_endian=True, enforce_file_format=True)
    result = read(tmp_path, opts())
    assert reasons(result) == {"x.dcm": "unsupported_transfer_syntax"}
    assert "'1.2.3.4.5.6.7'" in result.rejected[0].detail


# --- presentation intent: FOR PROCESSING images are refused -----------------------------------


@pytest.mark.parametrize(
    ("tags", "refused"),
    [
        ({}, False),
        ({"PresentationIntentType": "FOR PRESENTATION"}, False),
        ({"PresentationIntentType": ""}, False),
        ({"PresentationIntentType": "FOR PROCESSING"}, True),
        ({"PresentationIntentType": "for processing "}, True),
        ({"SOPClassUID": DigitalXRayImageStorageForPresentation}, False),
        ({"SOPClassUID": DigitalXRayImageStorageForProcessing}, True),
        ({"SOPClassUID": DigitalMammographyXRayImageStorageForProcessing}, True),
    ],
)
def test_for_processing(tags: dict[str, str], refused: bool) -> None:
    ds = Dataset()
    with warnings.catch_warnings():  # pydicom warns that lower case is no code string
        warnings.simplefilter("ignore")
        for key, value in tags.items():
            setattr(ds, key, value)
    why = for_processing(ds)
    assert bool(why) == refused
    if refused:
        assert "For Processing" in why or "FOR PROCESSING" in why


def test_for_processing_rule_ingest_and_predict_agree(tmp_path: Path) -> None:
    """Ingest rejects (for_processing) exactly the images that cxr predict refuses."""
    assert {"PresentationIntentType", "SOPClassUID"} <= set(HEADER_TAGS)
    cases = {
        "raw.dcm": ("for_processing", {"PresentationIntentType": "FOR PROCESSING"}),
        "raw_class.dcm": ("for_processing", {"SOPClassUID": DigitalXRayImageStorageForProcessing}),
        "shown.dcm": ("", {"PresentationIntentType": "FOR PRESENTATION"}),
        "no_intent.dcm": ("", {}),
    }
    for i, (name, (_, tags)) in enumerate(cases.items()):
        ds = make_ds(f"1.2.3.8{i}", study=f"1.2.9.8{i}", **tags)
        write(ds, tmp_path / "ingest" / name)
        write(ds, tmp_path / "predict" / name / "pa.dcm")
    result = read(tmp_path / "ingest", opts())
    ingest = reasons(result)
    assert ingest == {name: reason for name, (reason, _) in cases.items() if reason}
    details = {r.path: r.detail for r in result.rejected}
    assert "PresentationIntentType (0008,0068) is FOR PROCESSING" in details["raw.dcm"]
    assert "Digital X-Ray Image Storage - For Processing" in details["raw_class.dcm"]
    for name, (reason, _) in cases.items():
        folder = tmp_path / "predict" / name
        if not reason:
            assert find_study_views(folder).frontal == folder / "pa.dcm"
            assert collect_studies(folder / "pa.dcm")[0].frontal == folder / "pa.dcm"
            continue
        for given in (folder, folder / "pa.dcm"):  # a study folder, or the image itself
            with pytest.raises(PredictError, match="FOR PROCESSING") as err:
                collect_studies(given)
            assert "\n" not in str(err.value) and "FOR PRESENTATION" in str(err.value)


def test_the_synthetic_dx_and_cr_files_are_for_presentation(tmp_path: Path) -> None:
    syn = pytest.importorskip("pipelines.synthetic")
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    for i, modality in enumerate(("DX", "CR")):
        uids = {key: generate_uid() for key in keys}
        syn.write_dicom(
            tmp_path / f"{modality}.dcm",
            np.full((32, 32), 0.5),
            photometric="MONOCHROME2",
            bits_stored=12,
            view_position="PA",
            modality=modality,
            uids=uids,
            phi={"PatientID": f"P{i}"},
        )
    assert read_header(tmp_path / "DX.dcm").PresentationIntentType == "FOR PRESENTATION"
    result = read(tmp_path, opts())
    assert len(result.manifest) == 2 and result.rejected == []
