"""The value of a `dicom` Kafka message: de-identified metadata plus where the de-identified file is; no pixels."""

from __future__ import annotations

from typing import Any

from ingestion.dicom.models import DicomDeidResult


def dicom_event_value(result: DicomDeidResult, uri: str) -> dict[str, Any]:
    return {
        "person": result.person,
        "study_uid": result.study_uid,
        "series_uid": result.series_uid,
        "sop_instance_uid": result.sop_instance_uid,
        "sop_class_uid": result.sop_class_uid,
        "modality": result.modality,
        "occurred_at": result.occurred_at.isoformat() if result.occurred_at else None,
        "acquisition": result.acquisition,
        "uri": uri,
        "sha256": result.sha256,
        "metadata": result.metadata,
        "deid_method": list(result.method),
    }
