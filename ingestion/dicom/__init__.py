"""DICOM at the gateway: PS3.15 Annex E de-identification, object store, STOW-RS framing, the `dicom` event value."""

from __future__ import annotations

from ingestion.dicom.deid import deidentify_dicom
from ingestion.dicom.event import dicom_event_value
from ingestion.dicom.models import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_OUT_OF_RESOURCES,
    FAILURE_PROCESSING,
    FAILURE_SOP_CLASS_NOT_SUPPORTED,
    DicomDeidOptions,
    DicomDeidResult,
    DicomRejected,
)
from ingestion.dicom.store import ObjectStore
from ingestion.dicom.stow import parse_stow_multipart, stow_response

__all__ = [
    "FAILURE_CANNOT_UNDERSTAND",
    "FAILURE_OUT_OF_RESOURCES",
    "FAILURE_PROCESSING",
    "FAILURE_SOP_CLASS_NOT_SUPPORTED",
    "DicomDeidOptions",
    "DicomDeidResult",
    "DicomRejected",
    "ObjectStore",
    "deidentify_dicom",
    "dicom_event_value",
    "parse_stow_multipart",
    "stow_response",
]
