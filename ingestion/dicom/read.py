"""Reading an untrusted DICOM payload: every failure becomes a `DicomRejected` with a PHI-free reason.

Decisions (see docs/dicom.md):
- a Part 10 file with File Meta is read normally;
- a file without File Meta (no preamble, no "DICM") is salvaged with `force=True` only if pydicom reads the whole
  dataset, it carries SOP Class and SOP Instance UIDs and its transfer syntax can be inferred from the encoding;
- every element is converted eagerly (pydicom reads lazily, so a broken element would otherwise fail later);
- numeric strings (IS, DS) that are not numbers are rejected: acquisition features downstream would be wrong;
- native pixel data shorter than Rows x Columns x Samples x Frames x BitsAllocated says is rejected as truncated;
  encapsulated pixel data must split into fragments.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ingestion.dicom.models import DicomRejected

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data
_NUMERIC_STRING_VRS = {"IS", "DS"}


class _RedactValues(logging.Filter):
    """pydicom logs invalid *values* (names, UIDs) in its warnings; keep its tag-level messages, drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("Invalid value" in msg or "Please see" in msg)


_configured = False


def quiet_pydicom() -> None:
    """Once per process: no value-echoing read-time validation (we validate ourselves), no values in logs."""
    global _configured
    if _configured:
        return
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # Added once, process-wide: `warnings.catch_warnings` per call is not thread-safe (the gateway runs us in a pool).
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")
    logging.getLogger("pydicom").addFilter(_RedactValues())
    _configured = True


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def read_dataset(data: bytes, max_bytes: int, keep_raw: list[Any] | None = None) -> tuple[Dataset, UID]:
    """Parse and fully validate; return the dataset and the transfer syntax to write it with.

    `keep_raw`: receives (dataset, tag, raw element, converted element, converted value) for every element, so that
    a writer can put the original bytes back for elements that de-identification left as they were."""
    quiet_pydicom()
    if not data:
        raise DicomRejected("empty", "empty payload: no DICOM bytes")
    if len(data) > max_bytes:
        raise DicomRejected("too_large", f"payload of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    ds, salvaged = _parse(data)
    _convert_all(ds, 0, keep_raw)
    sop_class = ds.get("SOPClassUID")
    transfer_syntax = _transfer_syntax(ds, salvaged, sop_class)
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if not str(ds.get(keyword) or "").strip():
            raise DicomRejected(
                "missing_attribute",
                f"required attribute {keyword} is missing or empty" + (" (file without File Meta)" if salvaged else ""),
                sop_class_uid=str(sop_class) if sop_class else None,
            )
    _check_pixel_data(ds, transfer_syntax, str(sop_class))
    return ds, transfer_syntax


def _parse(data: bytes) -> tuple[FileDataset | Dataset, bool]:
    try:
        return pydicom.dcmread(io.BytesIO(data)), False
    except InvalidDicomError:
        pass  # no preamble/"DICM": try the salvage path below
    except Exception as err:  # pydicom raises many types on corrupt input; all mean "malformed"
        raise DicomRejected("malformed", f"unreadable DICOM file ({type(err).__name__} while parsing)") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as err:
        raise DicomRejected(
            "not_dicom", f"not a DICOM file: no File Meta and no readable dataset ({type(err).__name__})"
        ) from None
    if not any(tag >> 16 == 0x0008 for tag in ds.keys()) or "SOPClassUID" not in ds:  # noqa: SIM118
        raise DicomRejected(
            "not_dicom", "not a DICOM file: no File Meta header and no identifiable dataset (no SOP Class UID)"
        )
    return ds, True


def _convert_all(ds: Dataset, depth: int = 0, keep_raw: list[Any] | None = None) -> None:
    """Touch every element so lazy conversion errors surface here; reject numbers that are not numbers."""
    if depth > 32:
        raise DicomRejected("malformed", "sequences nested deeper than 32 levels")
    raw_of = ds._dict  # pydicom's element store: the raw (undecoded) element before `ds[tag]` converts it
    for tag in list(ds.keys()):
        raw = raw_of.get(tag)
        try:
            elem = ds[tag]
            value = elem.value
        except Exception as err:
            raise DicomRejected("malformed", f"element {_tag(tag)} cannot be decoded ({type(err).__name__})") from None
        if keep_raw is not None and isinstance(raw, RawDataElement):
            keep_raw.append((ds, tag, raw, elem, value))
        if elem.VR == "SQ":
            for item in value or ():
                _convert_all(item, depth + 1, keep_raw)
        elif elem.VR in _NUMERIC_STRING_VRS and value not in (None, ""):
            _check_numeric(tag, elem.VR, value)


def _check_numeric(tag: int, vr: str, value: Any) -> None:
    values = value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    for v in values:
        text = str(v).strip()
        if not text:
            continue
        try:
            int(text) if vr == "IS" else float(text)
        except ValueError:
            try:  # IS written as "1.0" is tolerated by pydicom and harmless
                if vr == "IS" and float(text).is_integer():
                    continue
            except ValueError:
                pass
            keyword = pydicom.datadict.keyword_for_tag(tag) or "private element"
            raise DicomRejected(
                "invalid_value", f"element {_tag(tag)} {keyword} has VR {vr} but its value is not a number"
            ) from None


def _transfer_syntax(ds: Dataset, salvaged: bool, sop_class: Any) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    if not salvaged and meta is not None and len(meta):
        raise DicomRejected(
            "missing_file_meta",
            "File Meta Information has no Transfer Syntax UID (0002,0010)",
            sop_class_uid=str(sop_class) if sop_class else None,
        )
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        raise DicomRejected("missing_file_meta", "no File Meta and the encoding cannot be inferred")
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        raise DicomRejected(
            "missing_file_meta", "compressed pixel data without File Meta: the transfer syntax is unknown"
        )
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_pixel_data(ds: Dataset, ts: UID, sop_class: str) -> None:
    if "PixelData" not in ds:
        return
    elem = ds["PixelData"]
    value = elem.value
    if value is None:
        return
    if ts.is_encapsulated or elem.is_undefined_length:
        from pydicom.encaps import generate_fragments

        try:
            fragments = sum(1 for _ in generate_fragments(value))
        except Exception as err:
            raise DicomRejected(
                "malformed", f"encapsulated pixel data is corrupt ({type(err).__name__})", sop_class_uid=sop_class
            ) from None
        if fragments == 0:
            raise DicomRejected(
                "truncated_pixel_data", "encapsulated pixel data has no fragments", sop_class_uid=sop_class
            )
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel") or 1)
        frames = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise DicomRejected(
            "missing_attribute",
            "pixel data without a usable Image Pixel description (Rows, Columns, BitsAllocated)",
            sop_class_uid=sop_class,
        ) from None
    expected_bits = rows * cols * samples * frames * bits
    expected = (expected_bits + 7) // 8
    if len(value) < expected:
        raise DicomRejected(
            "truncated_pixel_data",
            f"pixel data holds {len(value)} bytes but Rows x Columns x Samples x Frames x BitsAllocated "
            f"needs {expected}",
            sop_class_uid=sop_class,
        )
