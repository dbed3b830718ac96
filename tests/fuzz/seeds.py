"""Seed corpora of the fuzz targets, built at run time.

- DICOM: small chest images written with the test builders (``tests/pipelines/sources``) in every
  transfer syntax the project decodes (native little / big endian, implicit, deflated, RLE, JPEG
  baseline, JPEG-LS, JPEG 2000) and with the header features the decoder handles (MONOCHROME1,
  windows, VOI LUTs, padding, rescale, RGB, several frames); pydicom's own test files; the real
  CR file of ``../shared/real-cxr``.
- PNG / JPEG: every colour mode the decoder converts, progressive and EXIF-rotated JPEG, and the
  real radiographs of ``../shared/real-cxr`` (small files as they are, larger ones re-encoded
  small in their own format and mode, so that their quirks stay and libFuzzer's length limit
  keeps whole files).
- CSV: the first rows of the real metadata samples and small tables of each layout.
- params: the project's ``params.yaml`` and a single-input variant.

Nothing of ``real-cxr`` is copied into the repository: it is read here, when it exists. Pillow
and pydicom are imported inside the functions, so that the fuzz runner imports them inside
atheris's instrumentation.
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REAL_CXR = ROOT.parent / "shared" / "real-cxr"
LABELS_MARK = b"\n#labels#\n"
#: real files up to this size are seeds as they are; larger ones are re-encoded small
RAW_LIMIT = 48_000
THUMB = 96
log = logging.getLogger(__name__)


def _bytes(ds: object) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # type: ignore[attr-defined]
    return buf.getvalue()


def _safe(builders: dict[str, Callable[[], bytes]]) -> dict[str, bytes]:
    """Each builder's bytes; one that fails (a codec missing here) is left out and logged."""
    out = {}
    for name, build in builders.items():
        try:
            out[name] = build()
        except Exception as exc:  # a seed is a convenience, never a reason to stop
            log.warning("seed %s not built: %s: %s", name, type(exc).__name__, exc)
    return out


# ---------------------------------------------------------------------------------------------
# DICOM


def _chest(**extra: object) -> object:
    from tests.pipelines.sources.test_dicom import make_ds

    return make_ds("1.2.826.0.1.3680043.8.498.77", **extra)


def _compressed(syntax: str, relabel: str = "", **kw: object) -> Callable[[], bytes]:
    """A 64 px chest image compressed with ``syntax`` (labelled ``relabel`` when given: an
    HTJ2K decoder reads a JPEG 2000 stream)."""

    def build() -> bytes:
        from tests.pipelines.sources.test_dicom import pixels

        ds = _chest()
        ds.Rows = ds.Columns = 64  # OpenJPEG's default 6 resolutions need more than 16 px
        ds.PixelData = pixels(0, 64, 64).tobytes()
        ds.compress(syntax, **kw)
        if relabel:
            ds.file_meta.TransferSyntaxUID = relabel
        return _bytes(ds)

    return build


def _jpeg_baseline(syntax: str = "") -> bytes:
    """A JPEG baseline stream, under another JPEG transfer syntax when given (no encoder here
    writes JPEG Lossless: libjpeg decodes every process, so the syntax's decoder is reached)."""
    from tests.pipelines.sources.test_dicom import jpeg_bytes, jpeg_ds

    ds = jpeg_ds(jpeg_bytes(), "1.2.826.0.1.3680043.8.498.78")
    if syntax:
        ds.file_meta.TransferSyntaxUID = syntax
    return _bytes(ds)


def _rgb() -> bytes:
    ds = _chest()
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ds.set_pixel_data(rgb, "RGB", 8)
    return _bytes(ds)


def _frames() -> bytes:
    ds = _chest()
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    return _bytes(ds)


def _voi_lut() -> bytes:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _chest()
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", list(range(0, 65536, 16)))  # LUTData
    ds.VOILUTSequence = Sequence([item])
    return _bytes(ds)


def _modality_lut() -> bytes:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _chest()
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new(0x00283006, "US", list(range(0, 4096, 16)))  # LUTData
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    return _bytes(ds)


def _view_code() -> bytes:
    from pydicom.sequence import Sequence

    from tests.pipelines.sources.test_dicom import code_item

    ds = _chest(view_position=None)
    ds.ViewCodeSequence = Sequence([code_item("R-10214", "SRT", "postero-anterior")])
    return _bytes(ds)


def _syntax(uid: str) -> Callable[[], bytes]:
    return lambda: _bytes(_chest(syntax=uid))


def _pydicom_files() -> dict[str, bytes]:
    """pydicom's bundled test files (every syntax, odd headers), those under 128 KB."""
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return {
        f"pydicom-{p.name}": p.read_bytes()
        for p in sorted(folder.glob("*.dcm"))
        if p.stat().st_size <= 128_000
    }


def chest_dicom_seeds() -> dict[str, bytes]:
    """Chest DX images (the ingest rules accept them) in every syntax and header variant."""
    from pydicom import uid

    builders: dict[str, Callable[[], bytes]] = {
        "explicit-le.dcm": _syntax(uid.ExplicitVRLittleEndian),
        "implicit-le.dcm": _syntax(uid.ImplicitVRLittleEndian),
        "explicit-be.dcm": _syntax(uid.ExplicitVRBigEndian),
        "deflated.dcm": _syntax(uid.DeflatedExplicitVRLittleEndian),
        "rle.dcm": _compressed(uid.RLELossless),
        "jpeg-ls.dcm": _compressed(uid.JPEGLSLossless),
        "jpeg-ls-near.dcm": _compressed(uid.JPEGLSNearLossless, jls_error=2),
        "j2k-lossless.dcm": _compressed(uid.JPEG2000Lossless),
        "j2k.dcm": _compressed(uid.JPEG2000, j2k_cr=[20]),
        "jpeg-baseline.dcm": _jpeg_baseline,
        "jpeg-extended.dcm": lambda: _jpeg_baseline(uid.JPEGExtended12Bit),
        "jpeg-lossless.dcm": lambda: _jpeg_baseline(uid.JPEGLossless),
        "jpeg-lossless-sv1.dcm": lambda: _jpeg_baseline(uid.JPEGLosslessSV1),
        "htj2k.dcm": _compressed(uid.JPEG2000Lossless, relabel=uid.HTJ2KLossless),
        "monochrome1.dcm": lambda: _bytes(_chest(PhotometricInterpretation="MONOCHROME1")),
        "window.dcm": lambda: _bytes(_chest(WindowCenter=2048, WindowWidth=1024)),
        "sigmoid.dcm": lambda: _bytes(
            _chest(WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")
        ),
        "rescale.dcm": lambda: _bytes(_chest(RescaleSlope=2, RescaleIntercept=-1024)),
        "padding.dcm": lambda: _bytes(_chest(PixelPaddingValue=0, PixelPaddingRangeLimit=10)),
        "signed.dcm": lambda: _bytes(_chest(PixelRepresentation=1)),
        "voi-lut.dcm": _voi_lut,
        "modality-lut.dcm": _modality_lut,
        "rgb.dcm": _rgb,
        "frames.dcm": _frames,
        "lateral.dcm": lambda: _bytes(_chest(view_position="LL")),
        "view-code.dcm": _view_code,
        "no-pixels.dcm": lambda: _bytes(_chest(pixel_data=False)),
    }
    seeds = _safe(builders)
    real = sorted((REAL_CXR / "dicom").glob("*.dcm")) if REAL_CXR.is_dir() else []
    seeds.update({f"real-{i}.dcm": p.read_bytes() for i, p in enumerate(real)})
    return seeds


def dicom_seeds() -> dict[str, bytes]:
    """The chest images and pydicom's test files."""
    return chest_dicom_seeds() | _pydicom_files()


# ---------------------------------------------------------------------------------------------
# PNG / JPEG


def _png(mode: str) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(2)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 4096, (12, 10), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (12, 10, 4), dtype=np.uint8), "RGBA")
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(mode: str = "L", **kw: object) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _rotated_jpeg() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90
    return _jpeg("L", exif=exif.tobytes())


def _real_image(path: Path) -> bytes:
    """A real file as it is when small, else re-encoded small in its own format and mode."""
    from PIL import Image

    data = path.read_bytes()
    if len(data) <= RAW_LIMIT:
        return data
    with Image.open(path) as im:
        fmt = im.format or "PNG"
        im.draft(im.mode, (THUMB, THUMB))
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        im.save(buf, format=fmt)
    return buf.getvalue()


def real_image_seeds() -> dict[str, bytes]:
    """Every real PNG / JPEG radiograph of ``real-cxr`` (empty when it is absent)."""
    if not REAL_CXR.is_dir():
        return {}
    files = sorted(REAL_CXR.glob("*/*.png")) + sorted(REAL_CXR.glob("*/images/*"))
    return _safe({f"real-{p.name}": (lambda p=p: _real_image(p)) for p in files})


def image_seeds() -> dict[str, bytes]:
    """DICOM, PNG and JPEG seeds of the decoder."""
    builders: dict[str, Callable[[], bytes]] = {
        **{f"{m.replace(';', '')}.png": (lambda m=m: _png(m)) for m in ("L", "LA", "P", "RGB")},
        **{f"{m.replace(';', '')}.png": (lambda m=m: _png(m)) for m in ("RGBA", "1", "I;16")},
        "gray.jpg": _jpeg,
        "rgb.jpg": lambda: _jpeg("RGB"),
        "cmyk.jpg": lambda: _jpeg("CMYK"),
        "progressive.jpg": lambda: _jpeg("L", progressive=True),
        "rotated.jpg": _rotated_jpeg,
    }
    return dicom_seeds() | _safe(builders) | real_image_seeds()


# ---------------------------------------------------------------------------------------------
# tables


def _real_head(name: str, lines: int = 8) -> bytes:
    path = REAL_CXR / "metadata_samples" / name
    if not path.is_file():
        return b""
    return b"".join(path.read_bytes().splitlines(keepends=True)[:lines])


MIMIC_META = (
    "dicom_id,subject_id,study_id,ViewPosition,Rows,Columns,StudyDate\n"
    "d1,10000032,50414267,PA,3056,2544,21800506\n"
    "d2,10000032,50414267,LATERAL,3056,2544,21800506\n"
    "d3,10000764,57375967,AP,,,21321015\n"
    "d1,10000032,50414267,PA,1,1,21800506\n"
)
_CHEXPERT_OBS = (
    "Atelectasis,Cardiomegaly,Consolidation,Edema,No Finding,Pleural Effusion,Pneumonia,"
    "Pneumothorax"
)


def mimic_labels() -> bytes:
    """A valid MIMIC label CSV for the studies of :data:`MIMIC_META`."""
    return (
        f"subject_id,study_id,{_CHEXPERT_OBS}\n"
        "10000032,50414267,1.0,,-1.0,0.0,,1.0,,\n"
        "10000764,57375967,,,,,1.0,,,\n"
    ).encode()


_TABLES: dict[str, tuple[str, str]] = {
    "nih": (
        "nih_cxr14_Data_Entry_sample50.csv",
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143\n"
        "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143\n"
        "00000002_000.png,No Finding,0,2,81,M,AP,2500,2048,0.171,0.171\n",
    ),
    "chexpert": (
        "chexpert_train_sample50.csv",
        f"Path,Sex,Age,Frontal/Lateral,AP/PA,{_CHEXPERT_OBS}\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,F,68,Frontal,AP,"
        "1.0,,-1.0,0.0,,1.0,,\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,F,68,Lateral,,"
        ",,,,1.0,,,\n",
    ),
    "padchest": (
        "padchest_sample.csv",
        "ImageID,ImageDir,StudyID,PatientID,Projection,Labels,Rows_DICOM,Columns_DICOM,"
        "BitsStored_DICOM\n"
        "a.png,0,s1,p1,PA,\"['normal']\",2000,2000,12\n"
        "b.png,0,s1,p1,L,\"['cardiomegaly', 'pleural effusion']\",2000,2000,12\n"
        "c.png,1,s2,p2,EXCLUDE,\"['unchanged']\",,,\n",
    ),
    "openi": (
        "openi_iu_paired_sample.csv",
        "study_uid,image_id,png_name,view_position,mesh_major,rows,columns\n"
        "1,1_IM-0001-4001,1_IM-0001-4001.dcm.png,PA,normal,2048,2496\n"
        "1,1_IM-0001-3001,1_IM-0001-3001.dcm.png,LL,"
        "Pleural Effusion/bilateral/small|Thickening/pleura,2048,2496\n"
        "2,2_IM-0652-1001,2_IM-0652-1001.dcm.png,PA,No Indexing,,\n",
    ),
    "csv": (
        "",
        "path,patient,study,view,labels,Effusion\n"
        "img/a.png,p1,s1,PA,Cardiomegaly|Effusion,\n"
        "img/b.png,p1,s1,LATERAL,No Finding,-1\n"
        "../c.png,p2,s2,AP,,1\n",
    ),
}


def table_seeds(source: str) -> dict[str, bytes]:
    """A small table of the layout, its gzip twin, and the real sample's first rows."""
    if source == "mimic":
        meta = MIMIC_META.encode()
        return {
            "meta.csv": meta + LABELS_MARK + mimic_labels(),
            "meta-only.csv": meta,
            "meta.csv.gz": gzip.compress(meta, mtime=0) + LABELS_MARK + mimic_labels(),
        }
    real_name, text = _TABLES[source]
    seeds = {"small.csv": text.encode(), "small.csv.gz": gzip.compress(text.encode(), mtime=0)}
    real = _real_head(real_name) if real_name else b""
    if real:
        seeds["real.csv"] = real
    return seeds


def dicom_label_seeds() -> dict[str, bytes]:
    """Labels CSVs of the DICOM reader."""
    return {
        "labels.csv": b"study_uid,Atelectasis,Effusion,Mass\n1.2.3,1,0,\n1.2.4,-1,,0\n",
        "dup.csv": b"study_uid,Edema\n1.2.3,1\n1.2.3,1\n",
    }


def params_seeds() -> dict[str, bytes]:
    """The project's params.yaml, each of its sections alone, a single-input ingest variant."""
    import yaml

    text = (ROOT / "params.yaml").read_bytes()
    sections = yaml.safe_load(text)
    single = b"ingest:\n  source: nih\n  input: data/raw/nih/Data_Entry_2017.csv\n"
    return {
        "params.yaml": text,
        "single.yaml": single + b"pair:\n  fractions: {train: 1}\n",
        **{
            f"{name}.yaml": yaml.safe_dump({name: value}).encode()
            for name, value in sections.items()
        },
    }


def predict_seeds() -> dict[str, bytes]:
    """Chest DICOMs and a CSV of studies."""
    return chest_dicom_seeds() | {
        "studies.csv": b"frontal,lateral,study\nimage.dcm,,s1\nimage.dcm,image.dcm,\n"
    }
