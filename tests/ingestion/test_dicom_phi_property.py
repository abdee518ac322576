"""PHI scan over data never seen before: hypothesis writes random identifying values (any script) into many
identifying attributes, nested sequences and private tags of a real file; none may survive de-identification."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from ingestion.dicom import DicomDeidOptions, DicomRejected, deidentify_dicom, dicom_event_value
from ingestion.pseudonym import Pseudonymizer

# pydicom warns (tags only) about the garbage it is fed here; the warnings are expected noise.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PS = Pseudonymizer(b"phi-property-key-0123456789abcdef")
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyzÄÖÜßéñ山田太郎王小東やまだたろうЖЯЩ"

# Attributes (keyword, VR) an EHR or modality fills with identifying values.
TOP_LEVEL = [
    ("PatientName", "PN"),
    ("PatientID", "LO"),
    ("OtherPatientIDs", "LO"),
    ("AccessionNumber", "SH"),
    ("InstitutionName", "LO"),
    ("InstitutionAddress", "ST"),
    ("InstitutionalDepartmentName", "LO"),
    ("ReferringPhysicianName", "PN"),
    ("PerformingPhysicianName", "PN"),
    ("NameOfPhysiciansReadingStudy", "PN"),
    ("OperatorsName", "PN"),
    ("PatientAddress", "LO"),
    ("PatientTelephoneNumbers", "SH"),
    ("PatientMotherBirthName", "PN"),
    ("PatientBirthName", "PN"),
    ("MilitaryRank", "LO"),
    ("PatientComments", "LT"),
    ("AdditionalPatientHistory", "LT"),
    ("StudyID", "SH"),
    ("StudyDescription", "LO"),
    ("ImageComments", "LT"),
    ("StationName", "SH"),
    ("DeviceSerialNumber", "LO"),
    ("RequestingPhysician", "PN"),
    ("DerivationDescription", "ST"),
    ("ProtocolName", "LO"),
]


@pytest.fixture(scope="module")
def base(shared_data: Path) -> bytes:
    return (shared_data / "dicom" / "CT_small.dcm").read_bytes()


token = st.text(alphabet=ALPHABET, min_size=7, max_size=12).map(lambda s: "Q" + s)  # "Q…" never a DICOM keyword


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(token, min_size=len(TOP_LEVEL) + 4, max_size=len(TOP_LEVEL) + 4, unique=True),
    uid_tail=st.integers(min_value=1, max_value=10**12),
    birth=st.dates(
        min_value=__import__("datetime").date(1920, 1, 1), max_value=__import__("datetime").date(2020, 1, 1)
    ),
)
def test_random_identifying_values_never_survive(base: bytes, values: list[str], uid_tail: int, birth: date) -> None:
    ds = pydicom.dcmread(io.BytesIO(base))
    ds.SpecificCharacterSet = "ISO_IR 192"
    for (keyword, _vr), value in zip(TOP_LEVEL, values, strict=False):
        setattr(ds, keyword, value)
    extra = values[len(TOP_LEVEL) :]
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    secret_uid = f"1.2.826.0.1.999.{uid_tail}"
    ds.StudyInstanceUID = secret_uid + ".1"
    ref = Dataset()  # identifying values nested in sequences the table keeps or does not list
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = secret_uid + ".2"
    ref.TextValue = extra[0]
    ref.PersonName = extra[1]
    ds.ReferencedImageSequence = [ref]
    unlisted = Dataset()
    unlisted.ContentCreatorName = extra[2]
    unlisted.RetrieveURL = f"https://{extra[3].encode('ascii', 'ignore').decode() or 'h'}.example/{secret_uid}"
    ds.ContentSequence = [unlisted]
    ds.add_new(0x00290010, "LO", "SECRET CREATOR")
    ds.add_new(0x00291010, "LO", extra[3])
    buf = io.BytesIO()
    ds.save_as(buf)

    try:
        result = deidentify_dicom(
            buf.getvalue(), PS, lambda pid, issuer=None: PS.person(pid or "x"), DicomDeidOptions()
        )
    except DicomRejected as err:  # pragma: no cover - a rejection is safe, but these files are valid
        pytest.fail(f"valid file rejected: {err.reason}")
    texts = [
        result.dataset_bytes.decode("utf-8", errors="ignore"),
        result.dataset_bytes.decode("latin-1"),
        json.dumps(result.metadata, ensure_ascii=False),
        json.dumps(dicom_event_value(result, "file:///x"), ensure_ascii=False, default=str),
    ]
    secrets = [*values, secret_uid, ds.PatientBirthDate, "SECRET CREATOR"]
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"identifying value {secret[:3]}… survived"
    assert result.person == PS.person(values[1])  # PatientID is the second attribute
