"""What a usable chest radiograph is: modality, intent, body part, photometric, frames, syntax.

The ingest reader (:func:`check_image`, every rule) and ``cxr predict`` (modality, presentation
intent and body part) share these rules; the decoder (:mod:`pipelines.dicom.pixels`) shares the
photometric and frame rules, so that ingest accepts only what preprocess can decode.

Presentation intent (:func:`for_processing`): an image whose PresentationIntentType (0008,0068)
is ``FOR PROCESSING``, or whose SOP class is a "For Processing" one, holds the detector's data
before the vendor's processing (equalisation, edge enhancement, the tone curve). It is meant for
further processing, neither for display nor for a model trained on processed images (as the
public chest X-ray datasets are): refused. ``FOR PRESENTATION`` and an absent value (CR has
none) are accepted.

Body part (:func:`non_chest_part`): a blank BodyPartExamined is accepted; so is one holding a
chest word (``CHEST``, ``THORAX``, ``PORT CHEST``, ``CHEST ABDOMEN`` ...); one naming a known
non-chest part and no chest word (``KNEE``, ``ABDOMEN``, ``L SPINE``) is refused; any other word
(``PORTABLE``, ``UNKNOWN``, ``TX``: real archives are full of them) is accepted.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    BreastProjectionXRayImageStorageForProcessing,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForProcessing,
    JPEGExtended12Bit,
)

from pipelines.dicom.header import CODE_STRING, UID_STRING, integer, shown, text
from pipelines.dicom.reasons import (
    FOR_PROCESSING,
    MULTI_FRAME,
    NOT_CHEST,
    UNSUPPORTED_MODALITY,
    UNSUPPORTED_PHOTOMETRIC,
    UNSUPPORTED_TRANSFER_SYNTAX,
    Reject,
)

#: Modalities of a projection radiograph (ingest requires one of them).
ACCEPTED_MODALITIES: frozenset[str] = frozenset({"CR", "DX", "DR"})
#: ``cxr predict`` also takes a header without Modality.
RADIOGRAPH_MODALITIES: frozenset[str] = ACCEPTED_MODALITIES | {""}

#: BodyPartExamined fragments that mean a chest.
CHEST_WORDS: tuple[str, ...] = ("CHEST", "THORA", "TORAX", "TORACE", "LUNG", "PULM")
# fmt: off
#: BodyPartExamined words that name a part that is not the chest.
NOT_CHEST_WORDS: frozenset[str] = frozenset({
    "ABDOMEN", "ANKLE", "ARM", "BLADDER", "BRAIN", "BREAST", "CALCANEUS", "CLAVICLE", "COCCYX",
    "COLON", "CSPINE", "ELBOW", "ESOPHAGUS", "EXTREMITY", "EYE", "FACE", "FEMUR", "FINGER",
    "FOOT", "FOREARM", "HAND", "HEAD", "HEEL", "HIP", "HUMERUS", "JAW", "KIDNEY", "KNEE", "LEG",
    "LIVER", "LSPINE", "MANDIBLE", "NECK", "NOSE", "ORBIT", "PATELLA", "PELVIS", "SACRUM",
    "SCAPULA", "SHOULDER", "SINUS", "SKULL", "SPINE", "STOMACH", "TIBIA", "TMJ", "TOE",
    "TSPINE", "THUMB", "WRIST", "ZYGOMA",
})
# fmt: on

#: The "For Processing" SOP classes of projection radiography (DX, mammography, intra-oral).
FOR_PROCESSING_CLASSES: frozenset[str] = frozenset(
    {
        DigitalXRayImageStorageForProcessing,
        DigitalMammographyXRayImageStorageForProcessing,
        DigitalIntraOralXRayImageStorageForProcessing,
        BreastProjectionXRayImageStorageForProcessing,
    }
)

#: Photometric interpretations the decoder turns into a grey radiograph (and every ``YBR_*``).
DECODABLE_PHOTOMETRIC: frozenset[str] = frozenset({"MONOCHROME1", "MONOCHROME2", "RGB"})


def non_chest_part(body_part: str) -> str:
    """The non-chest word a BodyPartExamined names ('' when the image may be a chest).

    Args:
        body_part: the header value (any case).

    Returns:
        '' for a blank value, one with a chest word, or one naming no known non-chest part;
        else the first (alphabetically) known non-chest word it holds.
    """
    upper = body_part.upper()
    if not upper or any(word in upper for word in CHEST_WORDS):
        return ""
    hits = sorted(set(re.split(r"[^A-Z]+", upper)) & NOT_CHEST_WORDS)
    return hits[0] if hits else ""


def is_chest(body_part: str) -> bool:
    """Whether a BodyPartExamined value is acceptable as a chest (:func:`non_chest_part`)."""
    return not non_chest_part(body_part)


def for_processing(ds: Dataset) -> str:
    """Why an image is one for processing, not for presentation ('' when it is not).

    Args:
        ds: the header (PresentationIntentType and SOPClassUID are read).

    Returns:
        '' for a FOR PRESENTATION image or one without a presentation intent; else which
        attribute says FOR PROCESSING (names a defined term or a SOP class, never a free value).
    """
    intent = " ".join(text(ds, "PresentationIntentType").upper().replace("_", " ").split())
    if intent == "FOR PROCESSING":
        return "PresentationIntentType (0008,0068) is FOR PROCESSING"
    sop_class = text(ds, "SOPClassUID")
    if sop_class in FOR_PROCESSING_CLASSES:
        return f"the SOP class is {UID(sop_class).name}"
    return ""


def is_decodable_photometric(photometric: str) -> bool:
    """Whether the decoder reads this PhotometricInterpretation (upper case, stripped)."""
    return photometric in DECODABLE_PHOTOMETRIC or photometric.startswith("YBR")


def is_single_frame(frames: int) -> bool:
    """One radiograph per file: NumberOfFrames absent, 0 or 1."""
    return frames <= 1


@lru_cache(maxsize=64)
def decoder_plugins(uid: str) -> tuple[str, ...]:
    """Names of the installed pydicom decoder plugins for a transfer syntax (empty: none)."""
    try:
        decoder = get_decoder(UID(uid))
    except NotImplementedError:
        return ()
    if not decoder.is_available:
        return ()
    return ("native",) if decoder.is_native else tuple(sorted(decoder.available_plugins))


def check_image(ds: Dataset, syntax: UID) -> None:
    """Ingest's rules for one header: modality, intent, body part, frames, photometric, syntax.

    Args:
        ds: the header.
        syntax: its transfer syntax (:func:`pipelines.dicom.header.transfer_syntax`).

    Raises:
        Reject: ``unsupported_modality``, ``for_processing``, ``not_chest``, ``multi_frame``,
            ``unsupported_photometric`` or ``unsupported_transfer_syntax`` (``corrupt`` for a
            non-integer NumberOfFrames / BitsStored); details echo code strings and UIDs only.
    """
    modality = text(ds, "Modality").upper()
    if not modality:
        raise Reject(UNSUPPORTED_MODALITY, "no Modality (0008,0060); accepted: CR, DX, DR")
    if modality not in ACCEPTED_MODALITIES:
        raise Reject(
            UNSUPPORTED_MODALITY,
            f"Modality is {shown(modality, CODE_STRING)}; accepted: CR, DX, DR",
        )
    raw = for_processing(ds)
    if raw:
        raise Reject(
            FOR_PROCESSING,
            f"{raw}: the detector's data before the vendor's processing, not for display or a "
            "model; only FOR PRESENTATION images are used",
        )
    part = non_chest_part(text(ds, "BodyPartExamined"))
    if part:
        raise Reject(NOT_CHEST, f"BodyPartExamined is {part}, not chest")
    frames = integer(ds, "NumberOfFrames", 1) or 1
    if not is_single_frame(frames):
        raise Reject(MULTI_FRAME, f"{frames} frames; one frame per image is expected")
    photometric = text(ds, "PhotometricInterpretation").upper()
    if photometric and not is_decodable_photometric(photometric):
        # rejecting what the decoder cannot read keeps pair from choosing an undecodable image
        # over a decodable one of the same study
        raise Reject(
            UNSUPPORTED_PHOTOMETRIC,
            f"PhotometricInterpretation is {shown(photometric, CODE_STRING)}; decodable: "
            "MONOCHROME1, MONOCHROME2, RGB, YBR_*",
        )
    _check_syntax(ds, syntax)


def _check_syntax(ds: Dataset, syntax: UID) -> None:
    if not syntax.is_transfer_syntax:
        raise Reject(
            UNSUPPORTED_TRANSFER_SYNTAX,
            f"unknown transfer syntax UID {shown(str(syntax), UID_STRING)}",
        )
    plugins = decoder_plugins(str(syntax))
    if not plugins:
        raise Reject(
            UNSUPPORTED_TRANSFER_SYNTAX,
            f"no installed pydicom decoder handles {syntax.name} ({syntax})",
        )
    bits_stored = integer(ds, "BitsStored", 8) or 8
    if syntax == JPEGExtended12Bit and bits_stored > 8 and "pylibjpeg" not in plugins:
        # pydicom's Pillow plugin refuses 12-bit JPEG Extended; pylibjpeg-libjpeg decodes it
        raise Reject(
            UNSUPPORTED_TRANSFER_SYNTAX,
            f"12-bit {syntax.name} ({syntax}) needs pylibjpeg-libjpeg; "
            f"installed decoders: {', '.join(plugins)}",
        )
