"""STOW-RS multipart framing and response dataset; the content-addressed object store (local and fsspec)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from careloop.settings import Settings, load_settings
from ingestion.dicom import (
    FAILURE_CANNOT_UNDERSTAND,
    DicomDeidOptions,
    DicomRejected,
    ObjectStore,
    deidentify_dicom,
    parse_stow_multipart,
    stow_response,
)
from ingestion.pseudonym import Pseudonymizer

BOUNDARY = "careloop-test-boundary-7f3a"
CTYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: list[bytes], boundary: str = BOUNDARY, part_type: str = "application/dicom") -> bytes:
    body = b"preamble to ignore\r\n"
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
    return body + f"--{boundary}--\r\nepilogue".encode()


def test_stow_round_trip_two_files_and_a_broken_part(shared_data: Path) -> None:
    files = [(shared_data / "dicom" / n).read_bytes() for n in ("CT_small.dcm", "MR_small.dcm")]
    broken = b"\x00\x01this part is not DICOM\r\n--not-the-boundary\r\n"
    parts = parse_stow_multipart(CTYPE, multipart([files[0], broken, files[1]]))
    assert parts == [files[0], broken, files[1]]  # binary content survives byte for byte, CRLFs included

    ps = Pseudonymizer(b"stow-test-key-0123456789abcdef")
    referenced, failed = [], []
    for part in parts:
        try:
            r = deidentify_dicom(part, ps, lambda pid, issuer=None: ps.person(pid or "unknown"), DicomDeidOptions())
            referenced.append({"sop_class_uid": r.sop_class_uid, "sop_instance_uid": r.sop_instance_uid,
                               "retrieve_url": f"/dicomweb/studies/{r.study_uid}"})  # fmt: skip
        except DicomRejected as err:
            failed.append({"sop_class_uid": err.sop_class_uid, "sop_instance_uid": None,
                           "failure_reason": err.failure_reason})  # fmt: skip
    response = stow_response(referenced, failed)
    assert set(response) == {"00081198", "00081199"}
    ref = response["00081199"]
    assert ref["vr"] == "SQ" and len(ref["Value"]) == 2
    for item in ref["Value"]:
        assert item["00081150"]["vr"] == "UI" and item["00081150"]["Value"][0].startswith("1.2.840.10008.5.1.4.1.1")
        assert item["00081155"]["Value"][0].startswith("2.25.")
        assert item["00081190"]["vr"] == "UR"
    bad = response["00081198"]["Value"]
    assert len(bad) == 1
    assert bad[0]["00081197"] == {"vr": "US", "Value": [FAILURE_CANNOT_UNDERSTAND]}
    assert bad[0]["00081155"] == {"vr": "UI"}  # unknown instance: present, empty


def test_stow_response_only_successes_has_no_failed_sequence() -> None:
    response = stow_response([{"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "2.25.1"}], [],
                             retrieve_url="/dicomweb/studies/2.25.9")  # fmt: skip
    assert "00081198" not in response
    assert response["00081190"] == {"vr": "UR", "Value": ["/dicomweb/studies/2.25.9"]}


def test_stow_parse_accepts_quoted_boundary_and_missing_part_content_type() -> None:
    body = f"--{BOUNDARY}\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode()
    assert parse_stow_multipart(f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"', body) == [b"abc"]


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/dicom", b"x", "multipart/related"),
        ('multipart/related; type="application/dicom"', b"x", "boundary"),
        (f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}', b"x", "application/dicom"),
        (CTYPE, f"--{BOUNDARY}\r\n\r\nabc".encode(), "closing boundary"),
        (CTYPE, b"no boundary anywhere", "closing boundary"),
        (CTYPE, f"--{BOUNDARY}--\r\n".encode(), "no parts"),
        (CTYPE, multipart([b"abc"], part_type="text/plain"), "text/plain"),
        ("", b"", "multipart/related"),
    ],
)
def test_stow_parse_errors_are_clear(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        parse_stow_multipart(content_type, body)


def test_object_store_local_round_trip_and_content_addressing(lake_settings: Settings) -> None:
    store = ObjectStore(lake_settings)
    data = b"DICM-like bytes " * 100
    sha = hashlib.sha256(data).hexdigest()
    uri = store.put(data, sha)
    assert uri.startswith("file://") and uri.endswith(f"/objects/dicom/{sha[:2]}/{sha}.dcm")
    assert store.get(uri) == data
    assert store.put(data, sha) == uri  # same content, same address, no second copy
    folder = lake_settings.path("objects", "dicom", sha[:2])
    assert [p.name for p in folder.iterdir()] == [f"{sha}.dcm"]  # no temp files left behind
    with pytest.raises(ValueError, match="sha256"):
        store.put(data + b"x", sha)


def test_object_store_fsspec_url(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARELOOP_OBJECT_STORE_URL", f"memory://careloop-{uuid.uuid4().hex[:8]}/dicom")
    store = ObjectStore(load_settings())
    data = b"\x00\x01 de-identified bytes"
    sha = hashlib.sha256(data).hexdigest()
    uri = store.put(data, sha)
    assert uri.startswith("memory://") and uri.endswith(f"{sha[:2]}/{sha}.dcm")
    assert store.get(uri) == data
    assert store.put(data, sha) == uri
