"""`deidentify_dicom`: PS3.15 Annex E Basic Profile with careloop's keyed pseudonyms for IDs, UIDs and dates.

Per element, in this order:
1. group lengths are dropped (they are recomputed on write);
2. private elements are removed unless allow-listed (their creator element is kept with them);
3. elements in Table E.1-1 (`profile.py`) get their action: UIDs are remapped with `Pseudonymizer.uid`, dates are
   shifted by the person's offset under the Modified Dates option, device identity is kept under its option,
   otherwise X removes, Z empties, D puts a dummy; sequences are emptied or removed unless they carry UIDs
   (U, X/Z/U*) or SR content, which are cleaned item by item;
4. elements not in the table are kept, except that defensively every person name and every free text or URL
   (ST, LT, UT, UC, UR: e.g. SR TextValue) is emptied, every UID that is not a registered DICOM UID (SOP classes,
   transfer syntaxes, coding schemes) is remapped and every date is shifted (or emptied without the Modified
   Dates option).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from ingestion.dicom.models import DicomDeidOptions, DicomDeidResult, DicomRejected
from ingestion.dicom.profile import TABLE_EDITION, ActionTable, action_table, parse_allow
from ingestion.dicom.read import PIXEL_TAGS, read_dataset
from ingestion.pseudonym import Pseudonymizer

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
CONTENT_SEQUENCE = 0x0040A730
SPECIFIC_CHARACTER_SET = 0x00080005
OUTPUT_CHARACTER_SET = "ISO_IR 192"  # UTF-8: every input repertoire (Latin-1, ISO 2022 JIS, GB18030...) fits

# PS3.16 CID 7050 De-identification Method
CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CODE_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")

_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "IS": "0", "DS": "0", "AS": "000D"}
_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
METADATA_MAX_BYTES = 1_000_000
PER_FRAME_KEY = "52009230"  # PerFrameFunctionalGroupsSequence
_FREE_TEXT_VRS = {"ST", "LT", "UT", "UC", "UR"}  # UR: URLs embed hosts and study UIDs
_DT_RE = re.compile(r"^(\d{8})(.*)$")


@dataclass
class _Context:
    options: DicomDeidOptions
    pseudonymizer: Pseudonymizer
    table: ActionTable
    shift_days: int
    allow: list[tuple[str | None, int, int]] = field(default_factory=list)


def deidentify_dicom(
    data: bytes,
    pseudonymizer: Pseudonymizer,
    resolve_person: Callable[..., str],
    options: DicomDeidOptions,
) -> DicomDeidResult:
    """De-identify one DICOM Part 10 payload, or raise `DicomRejected` (never anything else for bad input)."""
    keep_raw: list[Any] = []
    try:
        ds, transfer_syntax = read_dataset(data, options.max_bytes, keep_raw)
    except DicomRejected:
        raise
    except Exception as err:  # a reader bug on hostile input must still be a clean rejection
        raise DicomRejected("malformed", f"unreadable DICOM file ({type(err).__name__})") from None
    sop_class = str(ds.SOPClassUID).strip()
    burned_in = str(ds.get("BurnedInAnnotation") or "").strip().upper()
    if burned_in == "YES" and options.quarantine_burned_in:
        raise DicomRejected(
            "burned_in_annotation",
            "BurnedInAnnotation (0028,0301) is YES: pixel data may show identifying text; quarantined",
            sop_class_uid=sop_class,
        )
    original_id, issuer = patient_keys(ds)
    # with an issuer (0010,0021) the match respects the identifier system; without one it is by value only
    person = resolve_person(original_id, issuer=issuer) if issuer else resolve_person(original_id)
    ctx = _Context(
        options=options,
        pseudonymizer=pseudonymizer,
        table=action_table(),
        shift_days=pseudonymizer.date_shift_days(person),
        allow=[parse_allow(p) for p in options.private_tag_allowlist],
    )
    try:
        _clean(ds, ctx, depth=0)
        method = _stamp(ds, person, options)
        _finish_file_meta(ds, transfer_syntax)
        out = _write(ds, keep_raw)
    except DicomRejected:
        raise
    except Exception as err:  # a de-identification bug must reject, never pass data through
        raise DicomRejected(
            "deidentification_failed", f"de-identification failed ({type(err).__name__})", sop_class_uid=sop_class
        ) from None
    try:  # the event metadata converts every value (e.g. DS/IS to numbers): a value that cannot convert rejects
        return DicomDeidResult(
            person=person,
            dataset_bytes=out,
            sha256=hashlib.sha256(out).hexdigest(),
            metadata=metadata_json(ds),
            study_uid=_str(ds.get("StudyInstanceUID")),
            series_uid=_str(ds.get("SeriesInstanceUID")),
            sop_instance_uid=_str(ds.get("SOPInstanceUID")),
            sop_class_uid=sop_class,
            modality=_str(ds.get("Modality")),
            acquisition=acquisition_attributes(ds, options.retain_device_identity),
            occurred_at=occurred_at(ds) if options.retain_modified_dates else None,
            method=method,
        )
    except Exception as err:
        raise DicomRejected(
            "invalid_value",
            f"an attribute value cannot be represented in the DICOM JSON model ({type(err).__name__})",
            sop_class_uid=sop_class,
        ) from None


def patient_keys(ds: Dataset) -> tuple[str | None, str | None]:
    """(PatientID, IssuerOfPatientID) as the person resolution sees them; the issuer only with a PatientID."""
    original_id = str(ds.get("PatientID") or "").strip() or None
    issuer = str(ds.get("IssuerOfPatientID") or "").strip() or None
    return original_id, issuer if original_id else None


def peek_patient(data: bytes) -> tuple[str | None, str | None] | None:
    """The patient keys of a payload without de-identifying it (for resolving the person before the work is handed
    to a worker process); None when they cannot be read cheaply (the worker then hands the file back)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from ingestion.dicom.read import quiet_pydicom

    quiet_pydicom()
    tags = [0x00080005, PATIENT_ID, 0x00100021]
    try:
        try:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=tags)
        except InvalidDicomError:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=tags, force=True)
        return patient_keys(ds)
    except Exception:
        return None


# -- the element walk ---------------------------------------------------------------------------------------------
def _clean(ds: Dataset, ctx: _Context, depth: int) -> None:
    private_kept: set[tuple[int, int]] = set()  # (group, block) of kept private elements
    private_creators: list[int] = []
    for tag in list(ds.keys()):
        t = int(tag)
        group, element = t >> 16, t & 0xFFFF
        if element == 0:  # group length
            del ds[t]
            continue
        if group % 2 == 1:
            if 0x0010 <= element <= 0x00FF:
                private_creators.append(t)
            elif _private_allowed(ds, t, ctx):
                private_kept.add((group, element >> 8))
                elem = ds[t]
                if elem.VR == "SQ":
                    _clean_items(elem.value, ctx, depth)
            else:
                del ds[t]
            continue
        if t == SPECIFIC_CHARACTER_SET:
            if depth:
                del ds[t]  # the whole output is UTF-8, declared once at the top
            continue
        if depth == 0 and t in (PATIENT_ID, PATIENT_NAME):
            continue  # set to the person pseudonym in _stamp
        _apply(ds, ds[t], ctx, depth)
    for t in private_creators:
        if (t >> 16, t & 0xFF) not in private_kept:
            del ds[t]


def _clean_items(items: Iterable[Dataset], ctx: _Context, depth: int) -> None:
    for item in items or ():
        _clean(item, ctx, depth + 1)


def _apply(ds: Dataset, elem: DataElement, ctx: _Context, depth: int) -> None:
    t, vr = int(elem.tag), elem.VR
    action = ctx.table.action(t)
    if action is not None and ctx.options.retain_device_identity and t in ctx.table.device_identity:
        action = None  # Retain Device Identity: keep as is
        if vr == "SQ":
            _clean_items(elem.value, ctx, depth)
        return
    if action is None:
        _default(ds, elem, ctx, depth)
        return
    if vr == "SQ":
        if action in ("U", "X_Z_U*") or t == CONTENT_SEQUENCE:
            _clean_items(elem.value, ctx, depth)
        elif action == "X":
            del ds[t]
        else:
            elem.value = Sequence()
        return
    if vr == "UI":
        if action == "X":
            del ds[t]
        else:
            elem.value = _map(elem.value, ctx.pseudonymizer.uid)
        return
    if vr in ("DA", "DT") and ctx.options.retain_modified_dates:
        elem.value = _map(elem.value, lambda v: _shift(v, vr, ctx.shift_days))
        return
    if vr == "TM" and ctx.options.retain_modified_dates:
        return  # whole-day shifts leave times unchanged
    if action == "X":
        del ds[t]
    elif action in ("D", "X_D"):
        elem.value = _dummy(vr)
    else:  # Z, Z/D, X/Z, X/Z/D, U on a non-UID: keep the attribute, zero length
        elem.value = empty_value_for_VR(vr)


def _default(ds: Dataset, elem: DataElement, ctx: _Context, depth: int) -> None:
    vr = elem.VR
    if vr == "SQ":
        _clean_items(elem.value, ctx, depth)
    elif vr == "PN":
        elem.value = empty_value_for_VR(vr)
    elif vr == "UI":
        elem.value = _map(elem.value, lambda v: v if _registered(v) else ctx.pseudonymizer.uid(v))
    elif vr in ("DA", "DT"):
        if ctx.options.retain_modified_dates:
            elem.value = _map(elem.value, lambda v: _shift(v, vr, ctx.shift_days))
        else:
            elem.value = empty_value_for_VR(vr)
    elif vr in _FREE_TEXT_VRS:
        # Free text the table does not list (SR TextValue, derivation notes...) can hold names: emptied, not kept.
        elem.value = empty_value_for_VR(vr)


# -- values ---------------------------------------------------------------------------------------------------------
def _map(value: Any, fn: Callable[[str], str]) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, (MultiValue, list, tuple)):
        return [fn(str(v).strip()) if str(v).strip() else "" for v in value]
    text = str(value).strip()
    return fn(text) if text else value


def _registered(uid: str) -> bool:
    u = UID(uid)
    return u.is_valid and u.name != str(u)


def _shift_da(text: str, days: int) -> str:
    text = text.replace(".", "")  # ACR-NEMA "YYYY.MM.DD"
    try:
        d = datetime.strptime(text, "%Y%m%d").date()
        return (d + timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""  # a date we cannot shift is not kept


def _shift(value: str, vr: str, days: int) -> str:
    if vr == "DA":
        if "-" in value:  # a range
            return "-".join(_shift_da(p, days) if p else "" for p in value.split("-", 1))
        return _shift_da(value, days)
    m = _DT_RE.match(value)
    if not m:
        return ""  # DT with only a year or month: cannot shift by days, so removed
    shifted = _shift_da(m.group(1), days)
    return shifted + m.group(2) if shifted else ""


def _dummy(vr: str) -> Any:
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr in _TEXT_VRS:
        return _DUMMY_TEXT
    if vr in _NUMBER_VRS:
        return 0
    return empty_value_for_VR(vr)


# -- private allow-list ------------------------------------------------------------------------------------------
def _private_allowed(ds: Dataset, tag: int, ctx: _Context) -> bool:
    for creator, value, mask in ctx.allow:
        if tag & mask != value:
            continue
        if creator is None:
            return True
        creator_tag = (tag & 0xFFFF0000) | ((tag >> 8) & 0xFF)
        found = ds.get(creator_tag)
        if found is not None and str(found.value).strip() == creator:
            return True
    return False


# -- method, meta, output ----------------------------------------------------------------------------------------
def _stamp(ds: Dataset, person: str, options: DicomDeidOptions) -> list[str]:
    ds.PatientID = person
    ds.PatientName = person
    codes = [CODE_BASIC]
    if options.retain_modified_dates:
        codes.append(CODE_MODIFIED_DATES)
    if options.retain_device_identity:
        codes.append(CODE_DEVICE_IDENTITY)
    ds.SpecificCharacterSet = OUTPUT_CHARACTER_SET
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [meaning for _, meaning in codes] + [
        f"careloop keyed pseudonyms, PS3.15 {TABLE_EDITION}"
    ]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.retain_modified_dates else "REMOVED"
    return [meaning for _, meaning in codes]


def _finish_file_meta(ds: Dataset, transfer_syntax: UID) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CARELOOP_DEID"
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128


def _write(ds: Dataset, keep_raw: list[Any] | None = None) -> bytes:
    """Part 10 bytes of the de-identified dataset.

    Elements that de-identification left exactly as read (same element, same value object) and whose original bytes
    mean the same in the output (same transfer syntax; binary, or ASCII text, even length) are written from their
    original bytes: re-encoding them element by element was ~1/3 of the de-identification time. Every dataset of the
    tree is marked as already in the output encoding so that pydicom does not convert them back first."""
    ts = ds.file_meta.TransferSyntaxUID
    implicit, little = ts.is_implicit_VR, ts.is_little_endian
    swapped = []
    for d, tag, raw, elem, value in keep_raw or ():
        if (
            d._dict.get(tag) is elem
            and elem.value is value
            and d.original_encoding == (implicit, little)  # an item can have been read in another encoding
            and _passes_raw(raw, elem)
        ):
            d._dict[tag] = raw
            swapped.append((d, tag, elem))
    if swapped:
        _mark_encoding(ds, implicit, little, 0)
    try:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=little)
        return buf.getvalue()
    finally:
        for d, tag, elem in swapped:
            d._dict[tag] = elem


_RAW_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})
_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*")
_RAW_ASCII_VRS = frozenset({"AE", "AS", "CS", "DS", "IS", "TM", "DA", "DT", "UI", "SH", "LO"})


def _passes_raw(raw: Any, elem: DataElement) -> bool:
    if raw.VR is not None and raw.VR != elem.VR:
        return False  # e.g. UN read as a known VR: re-encoded
    value = raw.value
    if not isinstance(value, bytes) or len(value) % 2 or raw.length == 0xFFFFFFFF:
        return False
    if elem.VR in _RAW_BINARY_VRS:
        return True
    # printable ASCII only: ISO 2022 (e.g. JIS) text is 7-bit too but switches character sets with ESC sequences
    return elem.VR in _RAW_ASCII_VRS and _PRINTABLE_ASCII.fullmatch(value) is not None


def _mark_encoding(ds: Dataset, implicit: bool, little: bool, depth: int) -> None:
    """Declare the datasets of the tree read in the output encoding as already in the output character set (their
    values are decoded or pass-through ASCII/binary); the others keep pydicom's conversion on write."""
    if ds.original_encoding == (implicit, little):
        ds.set_original_encoding(implicit, little, ds._character_set)
    if depth > 32:
        return
    for elem in ds._dict.values():
        if elem.VR == "SQ" and not isinstance(elem, RawDataElement):
            for item in elem.value or ():
                _mark_encoding(item, implicit, little, depth + 1)


def metadata_json(ds: Dataset, max_bytes: int = METADATA_MAX_BYTES) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F) of the dataset without pixel data or any other bulk data.

    An enhanced multi-frame object can carry thousands of per-frame functional group items; when the JSON would
    exceed `max_bytes` (it rides in a Kafka message), only the first per-frame item is kept. The stored file keeps
    them all."""
    import orjson

    shallow = Dataset()
    for elem in ds:
        if int(elem.tag) not in PIXEL_TAGS:
            shallow.add(elem)
    shallow.set_original_encoding(False, True, OUTPUT_CHARACTER_SET)
    out = _strip_bulk(shallow.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _e: "omitted"))
    per_frame = out.get(PER_FRAME_KEY)
    if per_frame and len(per_frame.get("Value", ())) > 1 and len(orjson.dumps(out)) > max_bytes:
        out[PER_FRAME_KEY] = {**per_frame, "Value": per_frame["Value"][:1]}
    return out


def _strip_bulk(node: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for tag, elem in node.items():
        if "BulkDataURI" in elem:
            continue
        if elem.get("vr") == "SQ" and "Value" in elem:
            elem = {**elem, "Value": [_strip_bulk(item) for item in elem["Value"]]}
        kept[tag] = elem
    return kept


# -- derived fields ------------------------------------------------------------------------------------------------
_ACQUISITION = {
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "software_versions": "SoftwareVersions",
    "magnetic_field_strength": "MagneticFieldStrength",
    "slice_thickness": "SliceThickness",
    "spacing_between_slices": "SpacingBetweenSlices",
    "kvp": "KVP",
    "pixel_spacing": "PixelSpacing",
    "rows": "Rows",
    "columns": "Columns",
    "number_of_frames": "NumberOfFrames",
    "bits_stored": "BitsStored",
    "photometric_interpretation": "PhotometricInterpretation",
    "body_part_examined": "BodyPartExamined",
    "convolution_kernel": "ConvolutionKernel",
    "repetition_time": "RepetitionTime",
    "echo_time": "EchoTime",
    "flip_angle": "FlipAngle",
    "imaging_frequency": "ImagingFrequency",
    "x_ray_tube_current": "XRayTubeCurrent",
    "exposure": "Exposure",
    "contrast_bolus_agent": "ContrastBolusAgent",
}
_DEVICE = {"device_serial_number": "DeviceSerialNumber", "station_name": "StationName"}


def acquisition_attributes(ds: Dataset, with_device: bool) -> dict[str, Any]:
    """Scanner and protocol attributes kept as features for shift monitoring (top level or functional groups)."""
    wanted = dict(_ACQUISITION, **(_DEVICE if with_device else {}))
    found: dict[str, Any] = {}
    for name, keyword in wanted.items():
        value = _find(ds, keyword)
        if value is not None:
            found[name] = value
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        found["transfer_syntax"] = str(ds.file_meta.TransferSyntaxUID)
    return found


def _find(ds: Dataset, keyword: str, depth: int = 0) -> Any:
    if keyword in ds:
        value = _plain(ds[keyword].value)
        if value not in (None, "", []):
            return value
    if depth >= 3:
        return None
    for seq_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in (ds.get(seq_kw) or [])[:1]:
            for elem in item:
                if elem.VR == "SQ":
                    for sub in elem.value[:1]:
                        value = _find(sub, keyword, depth + 1)
                        if value is not None:
                            return value
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, (MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray, Sequence, Dataset)):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    text = str(value).strip()
    return text or None


def _str(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def occurred_at(ds: Dataset) -> datetime | None:
    """The (shifted) study time, else series, acquisition or content time; DICOM local time read as UTC unless
    TimezoneOffsetFromUTC says otherwise."""
    tz = _tz(_str(ds.get("TimezoneOffsetFromUTC")))
    dt_value = _str(ds.get("AcquisitionDateTime"))
    for date_kw, time_kw in (
        ("StudyDate", "StudyTime"),
        ("SeriesDate", "SeriesTime"),
        ("AcquisitionDate", "AcquisitionTime"),
        ("ContentDate", "ContentTime"),
    ):
        d = _str(ds.get(date_kw))
        if d:
            return _combine(d, _str(ds.get(time_kw)), tz)
    if dt_value:
        return _combine(dt_value[:8], dt_value[8:] or None, tz)
    return None


def _tz(text: str | None) -> timezone:
    if text and re.fullmatch(r"[+-]\d{4}", text):
        sign = -1 if text[0] == "-" else 1
        return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[3:5])))
    return UTC


def _combine(d: str, t: str | None, tz: timezone) -> datetime | None:
    try:
        day = datetime.strptime(d[:8], "%Y%m%d").date()
    except ValueError:
        return None
    hh = mm = ss = micro = 0
    if t:
        t = re.split(r"[+-]", t.replace(":", ""), maxsplit=1)[0]
        main, _, frac = t.partition(".")
        try:
            hh = int(main[0:2] or 0)
            mm = int(main[2:4] or 0)
            ss = min(int(main[4:6] or 0), 59)
            micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
        except ValueError:
            hh = mm = ss = micro = 0
    try:
        return (
            datetime.combine(day, datetime.min.time(), tz)
            .replace(hour=hh, minute=mm, second=ss, microsecond=micro)
            .astimezone(UTC)
        )
    except ValueError:
        return datetime.combine(day, datetime.min.time(), tz).astimezone(UTC)
