"""The boundary types of DICOM de-identification: options in, a de-identified result or a rejection out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# PS3.18 STOW-RS failure reasons (PS3.18 Table I.2-1 / 10.5-2): what we answer per failed instance.
FAILURE_PROCESSING = 0x0110  # Processing failure (e.g. quarantined by policy)
FAILURE_OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (e.g. too large)
FAILURE_CANNOT_UNDERSTAND = 0xC000  # Error: cannot understand (not DICOM, malformed)
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122  # Referenced SOP Class not supported

_FAILURE_BY_CLASS = {
    "empty": FAILURE_CANNOT_UNDERSTAND,
    "not_dicom": FAILURE_CANNOT_UNDERSTAND,
    "malformed": FAILURE_CANNOT_UNDERSTAND,
    "missing_file_meta": FAILURE_CANNOT_UNDERSTAND,
    "missing_attribute": FAILURE_CANNOT_UNDERSTAND,
    "invalid_value": FAILURE_CANNOT_UNDERSTAND,
    "truncated_pixel_data": FAILURE_CANNOT_UNDERSTAND,
    "too_large": FAILURE_OUT_OF_RESOURCES,
    "burned_in_annotation": FAILURE_PROCESSING,
    "deidentification_failed": FAILURE_PROCESSING,
}


class DicomRejected(Exception):
    """A DICOM input that we refuse; `reason` is human-readable and never contains PHI (no values, only tags)."""

    def __init__(self, error_class: str, reason: str, *, sop_class_uid: str | None = None) -> None:
        super().__init__(f"{error_class}: {reason}")
        self.error_class = error_class
        self.reason = reason
        # The SOP Class UID is not identifying; it lets a STOW-RS response fill FailedSOPSequence.
        self.sop_class_uid = sop_class_uid

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (Beam, Ray workers)
        return (_rebuild_rejected, (self.error_class, self.reason, self.sop_class_uid))

    @property
    def failure_reason(self) -> int:
        """The PS3.18 STOW-RS FailureReason (0008,1197) code for this rejection."""
        return _FAILURE_BY_CLASS.get(self.error_class, FAILURE_PROCESSING)


def _rebuild_rejected(error_class: str, reason: str, sop_class_uid: str | None) -> DicomRejected:
    return DicomRejected(error_class, reason, sop_class_uid=sop_class_uid)


class DicomDeidOptions(BaseModel):
    """Which PS3.15 Annex E options apply on top of the Basic Application Level Confidentiality Profile."""

    model_config = ConfigDict(extra="forbid")

    retain_modified_dates: bool = Field(
        True, description="Retain Longitudinal Temporal Information with Modified Dates: shift by the person's offset"
    )
    retain_device_identity: bool = Field(False, description="Retain Device Identity (serial numbers, station names)")
    private_tag_allowlist: list[str] = Field(
        default_factory=list,
        description='private tags kept: "gggg,xxee" creator-block patterns (e.g. "0019,10xx") or exact "gggg,eeee"',
    )
    quarantine_burned_in: bool = Field(True, description="reject images with BurnedInAnnotation = YES")
    max_bytes: int = Field(256 * 1024 * 1024, gt=0, description="largest accepted DICOM file")

    @field_validator("private_tag_allowlist")
    @classmethod
    def _patterns_parse(cls, v: list[str]) -> list[str]:
        from ingestion.dicom.profile import parse_allow

        for pattern in v:
            parse_allow(pattern)  # raises ValueError naming the bad entry
        return v


class DicomDeidResult(BaseModel):
    """One de-identified DICOM instance: the Part 10 file (pixel data kept) and what the `dicom` event carries."""

    person: str
    dataset_bytes: bytes
    sha256: str
    metadata: dict[str, Any]
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    acquisition: dict[str, Any] = Field(default_factory=dict)
    occurred_at: datetime | None = None
    method: list[str] = Field(default_factory=list)
