"""Property: on any mutation of a valid file, deidentify_dicom either succeeds (re-readable output) or rejects."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion.dicom import DicomDeidOptions, DicomRejected, deidentify_dicom
from ingestion.pseudonym import Pseudonymizer

# pydicom warns (tags only) about the garbage it is fed here; the warnings are expected noise.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PS = Pseudonymizer(b"fuzz-test-key-0123456789abcdef!!")
OPTIONS = DicomDeidOptions(max_bytes=1_000_000)


@pytest.fixture(scope="module")
def seeds(shared_data: Path) -> list[bytes]:
    return [(shared_data / "dicom" / n).read_bytes() for n in ("MR_small.dcm", "rtstruct.dcm", "test-SR.dcm")]


mutation = st.tuples(
    st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]),
    st.floats(min_value=0.0, max_value=1.0),
    st.binary(min_size=1, max_size=16),
)


def mutate(data: bytes, muts: list[tuple[str, float, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, where, chunk in muts:
        if not buf:
            break
        i = min(int(where * len(buf)), len(buf) - 1)
        if kind == "flip":
            buf[i] ^= chunk[0] or 0xFF
        elif kind == "truncate":
            del buf[i:]
        elif kind == "insert":
            buf[i:i] = chunk
        elif kind == "delete":
            del buf[i : i + len(chunk)]
        else:
            buf[i : i + len(chunk)] = chunk
    return bytes(buf)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(min_value=0, max_value=2), muts=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_files_never_crash(seeds: list[bytes], which: int, muts: list[tuple[str, float, bytes]]) -> None:
    data = mutate(seeds[which], muts)
    try:
        result = deidentify_dicom(data, PS, lambda pid, issuer=None: PS.person(pid or "unknown"), OPTIONS)
    except DicomRejected as err:
        assert err.error_class and err.reason
        return
    out = pydicom.dcmread(io.BytesIO(result.dataset_bytes))
    assert out.PatientIdentityRemoved == "YES"
    assert str(out.PatientID) == result.person


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2048))
def test_random_bytes_are_rejected_or_accepted_never_crash(data: bytes) -> None:
    with contextlib.suppress(DicomRejected):
        deidentify_dicom(b"\x00" * 128 + b"DICM" + data, PS, lambda pid, issuer=None: PS.person(pid or "x"), OPTIONS)


def test_regression_truncated_mr_with_empty_numeric_value(seeds: list[bytes]) -> None:
    """Found by the fuzzer in CI: truncating MR_small left a DS element empty, and converting it for the event's
    DICOM JSON raised ValueError out of `deidentify_dicom` instead of a reasoned rejection."""
    data = mutate(seeds[0], [("truncate", 0.3517112326088406, b"\x00"), ("insert", 1.0, b"\x00"),
                             ("truncate", 0.3517112326088406, b"\x00")])  # fmt: skip
    with pytest.raises(DicomRejected) as info:
        deidentify_dicom(data, PS, lambda pid, issuer=None: PS.person(pid or "unknown"), OPTIONS)
    assert info.value.reason
