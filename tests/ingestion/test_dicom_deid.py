"""DICOM de-identification over every shared DICOM file: accept/reject, PHI scan, UIDs, dates, method, pixels."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from ingestion.dicom import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_OUT_OF_RESOURCES,
    FAILURE_PROCESSING,
    DicomDeidOptions,
    DicomDeidResult,
    DicomRejected,
    deidentify_dicom,
    dicom_event_value,
)
from ingestion.pseudonym import Pseudonymizer

KEY = b"test-pseudonym-key-0123456789abcdef"

# Expected outcome per shared file: None = accepted, else the error class of the rejection.
EXPECTED = {
    "CT_small.dcm": None,
    "JPEG2000.dcm": None,
    "MR_small.dcm": None,
    "MR_small_bigendian.dcm": None,
    "MR_small_implicit.dcm": None,
    "MR_truncated.dcm": "truncated_pixel_data",
    "badVR.dcm": "invalid_value",
    "bad_sequence.dcm": None,  # reads fully; its non-conformant UIDs are remapped anyway (docs/dicom.md)
    "chrGerm.dcm": None,
    "chrH31.dcm": None,
    "chrX1.dcm": None,
    "eCT_Supplemental.dcm": None,
    "emri_small.dcm": None,
    "examples_overlay.dcm": None,
    "liver_1frame.dcm": None,
    "meta_missing_tsyntax.dcm": "missing_file_meta",
    "no_meta.dcm": "not_dicom",
    "priv_SQ.dcm": "missing_attribute",
    "rtstruct.dcm": None,  # no File Meta, but a complete implicit-VR dataset: salvaged
    "test-SR.dcm": None,
}

PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstitutionName",
    "InstitutionAddress",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "OtherPatientIDs",
    "DeviceSerialNumber",
    "StationName",
)
CHARSETS = ("ascii", "latin-1", "utf-8", "iso2022_jp", "gb18030", "utf-16-le")


@pytest.fixture(scope="module")
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(KEY)


@pytest.fixture(scope="module")
def dicom_dir(shared_data: Path) -> Path:
    return shared_data / "dicom"


def run(data: bytes, ps: Pseudonymizer, options: DicomDeidOptions | None = None) -> DicomDeidResult:
    return deidentify_dicom(
        data, ps, lambda pid, issuer=None: ps.person(pid or "unknown-dicom-patient"), options or DicomDeidOptions()
    )


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True)


def _original_phi(path: Path) -> set[str]:
    """Identifying strings of the original: the PHI attributes anywhere in the file and every non-registered UID."""
    ds = _read(path.read_bytes())
    found: set[str] = set()

    def visit(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
                continue
            values = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value]
            if elem.keyword in PHI_KEYWORDS or elem.VR == "PN":
                for v in values:
                    if elem.VR == "PN":
                        for part in str(v).split("="):
                            found.update(p for p in part.replace("^", " ").split() if len(p) >= 3)
                    found.add(str(v))
            if elem.VR == "UI":
                for v in values:
                    uid = pydicom.uid.UID(str(v))
                    # not a registered (public) UID, nor the writer's own root (pydicom's implementation UID)
                    if str(v) and uid.name == str(v) and not pydicom.uid.PYDICOM_IMPLEMENTATION_UID.startswith(str(v)):
                        found.add(str(v))

    visit(ds)
    if getattr(ds, "file_meta", None) is not None:
        visit(ds.file_meta)  # e.g. bad_sequence.dcm: its File Meta names a SOP Instance UID the dataset does not
    # Manufacturer and model are kept by the profile; an institution named like its scanner vendor ("TOSHIBA" vs
    # "TOSHIBA_MEC") is not a leak of the institution.
    kept = " ".join(str(ds.get(k) or "") for k in ("Manufacturer", "ManufacturerModelName"))
    return {s.strip() for s in found if len(s.strip()) >= 4 and s.strip() not in kept}


def _all_values(ds: Dataset) -> set[str]:
    values: set[str] = set()
    for elem in ds.iterall():
        if elem.VR in ("SQ", "OB", "OW", "OF", "OD", "UN"):
            continue
        items = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value]
        for v in items:
            values.add(str(v).strip())
            values.update(str(v).replace("^", " ").replace("=", " ").split())
    return values


def _accepted(dicom_dir: Path) -> list[Path]:
    return [dicom_dir / name for name, err in EXPECTED.items() if err is None]


def test_every_shared_file_accepted_or_rejected_with_reason(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    names = sorted(p.name for p in dicom_dir.glob("*.dcm"))
    assert names == sorted(EXPECTED), "the shared DICOM set changed: update EXPECTED"
    for name in names:
        data = (dicom_dir / name).read_bytes()
        expected = EXPECTED[name]
        if expected is None:
            result = run(data, pseudonymizer)
            assert result.sha256 and result.dataset_bytes[128:132] == b"DICM", name
        else:
            with pytest.raises(DicomRejected) as info:
                run(data, pseudonymizer)
            assert info.value.error_class == expected, (name, info.value.reason)
            assert info.value.reason and len(info.value.reason) > 10
            assert info.value.failure_reason == FAILURE_CANNOT_UNDERSTAND


def test_phi_scan_output_bytes_metadata_and_event(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    rows = {r["file"]: r for r in csv.DictReader((dicom_dir / "DICOM_TAGS.csv").open(encoding="utf-8"))}
    for path in _accepted(dicom_dir):
        phi = _original_phi(path)
        row = rows[path.name]
        for col in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "InstitutionName",
            "InstitutionAddress",
            "ReferringPhysicianName",
            "OperatorsName",
            "StationName",
            "DeviceSerialNumber",
            "OtherPatientIDs",
        ):
            if len(row[col].strip()) >= 4 and row[col].strip() not in row["Manufacturer"]:
                phi.add(row[col].strip())
        result = run(path.read_bytes(), pseudonymizer)
        texts = []
        for charset in CHARSETS:
            texts.append(result.dataset_bytes.decode(charset, errors="ignore"))
        texts.append(json.dumps(result.metadata, ensure_ascii=False))
        texts.append(json.dumps(dicom_event_value(result, "file:///x.dcm"), ensure_ascii=False, default=str))
        texts.append(result.model_dump_json(exclude={"dataset_bytes"}))
        out_values = _all_values(_read(result.dataset_bytes))
        for value in phi:
            # Short values ("0010") occur by chance inside any byte stream: compare those with whole element values.
            assert value not in out_values, f"{path.name}: original identifier {value[:3]}… kept as a value"
            if len(value) >= 6:
                for text in texts:
                    assert value not in text, f"{path.name}: original identifier {value[:3]}… leaked"


def test_uids_remapped_consistently_across_files_of_one_study(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    # The three MR_small encodings are one instance of one study: same input UIDs -> same output UIDs.
    results = [
        run((dicom_dir / n).read_bytes(), pseudonymizer)
        for n in ("MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm")
    ]
    original = _read((dicom_dir / "MR_small.dcm").read_bytes())
    assert len({r.study_uid for r in results}) == 1
    assert len({r.series_uid for r in results}) == 1
    assert results[0].study_uid == pseudonymizer.uid(original.StudyInstanceUID)
    assert results[0].sop_instance_uid == pseudonymizer.uid(original.SOPInstanceUID)
    assert results[0].study_uid != original.StudyInstanceUID
    out = _read(results[0].dataset_bytes)
    assert out.FrameOfReferenceUID == pseudonymizer.uid(original.FrameOfReferenceUID)
    assert out.SOPClassUID == original.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert len({r.person for r in results}) == 1
    assert results[0].person == pseudonymizer.person(original.PatientID)


def test_referenced_uids_inside_sequences_are_remapped(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    original = _read((dicom_dir / "rtstruct.dcm").read_bytes())
    out = _read(run((dicom_dir / "rtstruct.dcm").read_bytes(), pseudonymizer).dataset_bytes)
    before = original.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    after = out.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert after == pseudonymizer.uid(before)
    assert out.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == pseudonymizer.uid(
        original.StructureSetROISequence[0].ReferencedFrameOfReferenceUID
    )


def test_dates_shifted_by_the_persons_offset(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    from datetime import datetime, timedelta

    original = _read((dicom_dir / "eCT_Supplemental.dcm").read_bytes())
    result = run((dicom_dir / "eCT_Supplemental.dcm").read_bytes(), pseudonymizer)
    out = _read(result.dataset_bytes)
    shift = timedelta(days=pseudonymizer.date_shift_days(result.person))
    assert shift.days != 0
    for keyword in ("StudyDate", "PatientBirthDate", "ContentDate"):
        before = datetime.strptime(original[keyword].value, "%Y%m%d")
        assert datetime.strptime(out[keyword].value, "%Y%m%d") == before + shift, keyword
    assert out.StudyTime == original.StudyTime
    study = datetime.strptime(original.StudyDate + original.StudyTime.split(".")[0], "%Y%m%d%H%M%S")
    assert result.occurred_at is not None
    assert result.occurred_at.replace(tzinfo=None, microsecond=0) == study + shift
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_dates_removed_without_the_modified_dates_option(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    result = run(
        (dicom_dir / "CT_small.dcm").read_bytes(), pseudonymizer, DicomDeidOptions(retain_modified_dates=False)
    )
    out = _read(result.dataset_bytes)
    assert not out.get("StudyDate")
    assert "AcquisitionDate" not in out or not out.AcquisitionDate
    assert result.occurred_at is None
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert "Retain Longitudinal Temporal Information Modified Dates Option" not in result.method


def test_method_attributes(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    out = _read(run((dicom_dir / "CT_small.dcm").read_bytes(), pseudonymizer).dataset_bytes)
    assert out.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113107"}
    assert all(item.CodingSchemeDesignator == "DCM" for item in out.DeidentificationMethodCodeSequence)
    assert "Basic Application Confidentiality Profile" in out.DeidentificationMethod
    device = run(
        (dicom_dir / "CT_small.dcm").read_bytes(), pseudonymizer, DicomDeidOptions(retain_device_identity=True)
    )
    assert {i.CodeValue for i in _read(device.dataset_bytes).DeidentificationMethodCodeSequence} == {
        "113100",
        "113107",
        "113109",
    }


def test_private_tags_removed_unless_allow_listed(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    data = (dicom_dir / "CT_small.dcm").read_bytes()
    original = _read(data)
    assert any(e.tag.is_private for e in original)
    out = _read(run(data, pseudonymizer).dataset_bytes)
    assert not any(e.tag.is_private for e in out.iterall())
    kept = _read(run(data, pseudonymizer, DicomDeidOptions(private_tag_allowlist=["0019,10xx"])).dataset_bytes)
    private = [e.tag for e in kept if e.tag.is_private]
    assert private and all(t.group == 0x0019 and (t.element >> 8 == 0x10 or t.element == 0x0010) for t in private)
    assert kept[0x00190010].value == original[0x00190010].value  # the block's private creator is kept with it
    assert kept[0x00191002].value == original[0x00191002].value
    by_creator = _read(
        run(data, pseudonymizer, DicomDeidOptions(private_tag_allowlist=["NOT_THIS_CREATOR:0019,10xx"])).dataset_bytes
    )
    assert not any(e.tag.is_private for e in by_creator)


def test_acquisition_attributes_kept_device_identity_only_on_request(
    dicom_dir: Path, pseudonymizer: Pseudonymizer
) -> None:
    data = (dicom_dir / "eCT_Supplemental.dcm").read_bytes()
    original = _read(data)
    result = run(data, pseudonymizer)
    out = _read(result.dataset_bytes)
    assert out.Manufacturer == original.Manufacturer
    assert out.ManufacturerModelName == original.ManufacturerModelName
    assert result.acquisition["manufacturer"] == "Acme Medical Devices"
    assert result.acquisition["pixel_spacing"] == [0.388672, 0.388672]  # from the shared functional groups
    assert result.acquisition["slice_thickness"] == 10.0
    assert "DeviceSerialNumber" not in out or not out.DeviceSerialNumber
    assert not out.get("StationName")
    assert "device_serial_number" not in result.acquisition
    kept = run(data, pseudonymizer, DicomDeidOptions(retain_device_identity=True))
    kept_ds = _read(kept.dataset_bytes)
    assert kept_ds.DeviceSerialNumber == original.DeviceSerialNumber
    assert kept_ds.StationName == original.StationName
    assert kept.acquisition["device_serial_number"] == "123456"
    mr = run((dicom_dir / "emri_small.dcm").read_bytes(), pseudonymizer)
    assert mr.acquisition["magnetic_field_strength"] == 3.0
    ct = run((dicom_dir / "CT_small.dcm").read_bytes(), pseudonymizer)
    assert ct.acquisition["kvp"] == 120.0


@pytest.mark.parametrize("name", [n for n, e in EXPECTED.items() if e is None])
def test_output_rereadable_and_pixel_data_unchanged(dicom_dir: Path, pseudonymizer: Pseudonymizer, name: str) -> None:
    data = (dicom_dir / name).read_bytes()
    original = _read(data)
    result = run(data, pseudonymizer)
    out = pydicom.dcmread(io.BytesIO(result.dataset_bytes))  # strict: a proper Part 10 file
    for elem in out.iterall():
        elem.value  # noqa: B018 - every element decodes
    if "PixelData" in original:
        assert out.PixelData == original.PixelData
    assert "PixelData" not in json.dumps(result.metadata)
    assert "7FE00010" not in result.metadata
    assert result.metadata["00100020"]["Value"] == [result.person]
    assert result.metadata["00120062"]["Value"] == ["YES"]


@pytest.mark.parametrize("name", ["chrGerm.dcm", "chrH31.dcm", "chrX1.dcm"])
def test_non_ascii_character_sets(dicom_dir: Path, pseudonymizer: Pseudonymizer, name: str) -> None:
    result = run((dicom_dir / name).read_bytes(), pseudonymizer)
    out = pydicom.dcmread(io.BytesIO(result.dataset_bytes))
    assert out.SpecificCharacterSet == "ISO_IR 192"
    assert str(out.PatientName) == result.person
    result.dataset_bytes.decode("utf-8", errors="strict") if False else None
    for elem in out.iterall():
        if elem.VR in ("LO", "SH", "ST", "LT", "UT", "PN"):
            str(elem.value).encode("utf-8")


def test_burned_in_annotation_quarantined_unless_configured(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    ds = _read((dicom_dir / "CT_small.dcm").read_bytes())
    ds.BurnedInAnnotation = "YES"
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DicomRejected) as info:
        run(buf.getvalue(), pseudonymizer)
    assert info.value.error_class == "burned_in_annotation"
    assert info.value.failure_reason == FAILURE_PROCESSING
    assert info.value.sop_class_uid == ds.SOPClassUID
    result = run(buf.getvalue(), pseudonymizer, DicomDeidOptions(quarantine_burned_in=False))
    assert _read(result.dataset_bytes).BurnedInAnnotation == "YES"


@pytest.mark.parametrize(
    ("data", "error_class"),
    [(b"", "empty"), (b"hello, this is not DICOM at all" * 10, "not_dicom"), (b"\x00" * 200, "not_dicom")],
)
def test_non_dicom_and_empty(pseudonymizer: Pseudonymizer, data: bytes, error_class: str) -> None:
    with pytest.raises(DicomRejected) as info:
        run(data, pseudonymizer)
    assert info.value.error_class == error_class


def test_oversized(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    with pytest.raises(DicomRejected) as info:
        run((dicom_dir / "CT_small.dcm").read_bytes(), pseudonymizer, DicomDeidOptions(max_bytes=1000))
    assert info.value.error_class == "too_large"
    assert info.value.failure_reason == FAILURE_OUT_OF_RESOURCES


def test_same_patient_id_same_person_and_unknown_patient(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    seen: list[str | None] = []

    def resolve(pid: str | None, issuer: str | None = None) -> str:
        seen.append(pid)
        return pseudonymizer.person(pid or "unknown")

    a = deidentify_dicom((dicom_dir / "MR_small.dcm").read_bytes(), pseudonymizer, resolve, DicomDeidOptions())
    b = deidentify_dicom((dicom_dir / "MR_small_implicit.dcm").read_bytes(), pseudonymizer, resolve, DicomDeidOptions())
    c = deidentify_dicom((dicom_dir / "emri_small.dcm").read_bytes(), pseudonymizer, resolve, DicomDeidOptions())
    assert a.person == b.person != c.person
    assert seen[0] == seen[1] == "4MR1" and seen[2] is None


def test_event_value_shape(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    import orjson

    result = run((dicom_dir / "CT_small.dcm").read_bytes(), pseudonymizer)
    value = dicom_event_value(result, "file:///objects/x.dcm")
    assert set(value) == {
        "person",
        "study_uid",
        "series_uid",
        "sop_instance_uid",
        "sop_class_uid",
        "modality",
        "occurred_at",
        "acquisition",
        "uri",
        "sha256",
        "metadata",
        "deid_method",
    }
    encoded = orjson.dumps(value)
    assert len(encoded) < 200_000 and b"7FE00010" not in encoded
    assert value["sha256"] == result.sha256 and value["modality"] == "CT"


def _with_extra_phi(dicom_dir: Path) -> tuple[bytes, Dataset]:
    """CT_small plus identifying values in places the table does not list, nested inside sequences."""
    ds = _read((dicom_dir / "CT_small.dcm").read_bytes())
    study_uid = ds.StudyInstanceUID
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.TextValue = "Seen by Dr Hidden Namesake at Secret Clinic"
    item.ObservationDateTime = "20040119101500.000000+0100"
    item.VerifyingObserverName = "Observer^Hidden"
    item.RetrieveURL = f"https://pacs.secret-clinic.example/studies/{study_uid}"
    ds.ContentSequence = [item]
    ds.DerivationDescription = "exported by Hidden Namesake"
    ds.add_new(0x00091010, "LO", "GEMS private sensitive")  # private element without a creator
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue(), ds


def test_unlisted_free_text_names_urls_and_nested_values(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    data, original = _with_extra_phi(dicom_dir)
    result = run(data, pseudonymizer)
    text = result.dataset_bytes.decode("latin-1")
    for secret in ("Hidden", "Namesake", "secret-clinic", original.StudyInstanceUID, original.SOPInstanceUID,
                   "GEMS private sensitive"):  # fmt: skip
        assert secret not in text
        assert secret not in json.dumps(result.metadata)
    out = _read(result.dataset_bytes)
    item = out.ContentSequence[0]
    assert item.ReferencedSOPInstanceUID == pseudonymizer.uid(original.SOPInstanceUID)
    assert item.ReferencedSOPClassUID == original.SOPClassUID
    shift = pseudonymizer.date_shift_days(result.person)
    from datetime import datetime, timedelta

    expected = (datetime(2004, 1, 19) + timedelta(days=shift)).strftime("%Y%m%d")
    assert item.ObservationDateTime == expected + "101500.000000+0100"


def test_deterministic_under_the_key_and_different_under_another(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    data = (dicom_dir / "CT_small.dcm").read_bytes()
    a, b = run(data, pseudonymizer), run(data, Pseudonymizer(KEY))
    assert a.dataset_bytes == b.dataset_bytes and a.sha256 == b.sha256
    other = run(data, Pseudonymizer(b"another-deployment-key-0123456789"))
    assert other.study_uid != a.study_uid and other.person != a.person


def test_creator_based_private_allow_list(dicom_dir: Path, pseudonymizer: Pseudonymizer) -> None:
    data = (dicom_dir / "CT_small.dcm").read_bytes()
    original = _read(data)
    creator = original[0x00190010].value  # "GEMS_ACQU_01"
    opts = DicomDeidOptions(private_tag_allowlist=[f"{creator}:0019,xx02"])  # element 02 of that creator, any block
    out = _read(run(data, pseudonymizer, opts).dataset_bytes)
    private = sorted(e.tag for e in out if e.tag.is_private)
    assert private == [0x00190010, 0x00191002]
    with pytest.raises(ValueError, match="gggg,eeee"):
        DicomDeidOptions(private_tag_allowlist=["0019,10"])  # a configuration error, found when options are built


def test_rejection_pickles_and_large_per_frame_metadata_is_capped(
    dicom_dir: Path, pseudonymizer: Pseudonymizer
) -> None:
    import pickle

    from ingestion.dicom.deid import PER_FRAME_KEY, metadata_json

    err = pickle.loads(pickle.dumps(DicomRejected("malformed", "element (0008,0016) broken", sop_class_uid="1.2")))
    assert (err.error_class, err.reason, err.sop_class_uid) == ("malformed", "element (0008,0016) broken", "1.2")
    out = _read(run((dicom_dir / "eCT_Supplemental.dcm").read_bytes(), pseudonymizer).dataset_bytes)
    assert len(out.PerFrameFunctionalGroupsSequence) == 2
    assert len(metadata_json(out)[PER_FRAME_KEY]["Value"]) == 2
    assert len(metadata_json(out, max_bytes=100)[PER_FRAME_KEY]["Value"]) == 1


@pytest.mark.parametrize(("name", "text"), [("chrH31.dcm", "山田スキャナ"), ("chrGerm.dcm", "Röntgengerät Süd"),
                                            ("chrX1.dcm", "王小東扫描仪")])  # fmt: skip
def test_kept_non_ascii_text_is_transcoded_to_utf8(
    dicom_dir: Path, pseudonymizer: Pseudonymizer, name: str, text: str
) -> None:
    ds = _read((dicom_dir / name).read_bytes())
    ds.ManufacturerModelName = text  # kept by the profile; written in the file's own character set
    buf = io.BytesIO()
    ds.save_as(buf)
    assert text.encode("utf-8") not in buf.getvalue() or name == "chrX1.dcm"  # ISO 2022 / Latin-1 input
    result = run(buf.getvalue(), pseudonymizer)
    out = pydicom.dcmread(io.BytesIO(result.dataset_bytes))
    assert out.SpecificCharacterSet == "ISO_IR 192"
    assert out.ManufacturerModelName == text
    assert text.encode("utf-8") in result.dataset_bytes
    assert result.acquisition["model"] == text
    assert result.metadata["00081090"]["Value"] == [text]


def test_two_instances_of_one_study_share_remapped_study_and_series(
    dicom_dir: Path, pseudonymizer: Pseudonymizer
) -> None:
    first = (dicom_dir / "CT_small.dcm").read_bytes()
    ds = _read(first)
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 2
    buf = io.BytesIO()
    ds.save_as(buf)
    a, b = run(first, pseudonymizer), run(buf.getvalue(), pseudonymizer)
    assert (a.study_uid, a.series_uid, a.person) == (b.study_uid, b.series_uid, b.person)
    assert a.sop_instance_uid != b.sop_instance_uid
    fa, fb = _read(a.dataset_bytes), _read(b.dataset_bytes)
    assert fa.FrameOfReferenceUID == fb.FrameOfReferenceUID
    assert fa.StudyDate == fb.StudyDate
