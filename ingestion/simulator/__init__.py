"""EHR simulator: deterministic, streaming, multi-site FHIR R4 + DICOM with a known ground truth and injectable shifts.

Public API (other stages import only these names)."""

from __future__ import annotations

from ingestion.simulator.dicom import render_dicom
from ingestion.simulator.generate import Delivery, DicomStudy, PatientRecord, RealismRecord, generate_patient
from ingestion.simulator.model import (
    COEF,
    INTERCEPT,
    PatientTruth,
    RealismConfig,
    SimulationConfig,
    draw_patient,
    draw_population,
    risk_logit,
)
from ingestion.simulator.shifts import Shift, ShiftSpecError, parse_shift
from ingestion.simulator.writer import Format, SimulationSummary, bundle_waves, iter_records, write_simulation

__all__ = [
    "COEF",
    "INTERCEPT",
    "Delivery",
    "DicomStudy",
    "Format",
    "PatientRecord",
    "PatientTruth",
    "RealismConfig",
    "RealismRecord",
    "Shift",
    "ShiftSpecError",
    "SimulationConfig",
    "SimulationSummary",
    "bundle_waves",
    "draw_patient",
    "draw_population",
    "generate_patient",
    "iter_records",
    "parse_shift",
    "render_dicom",
    "risk_logit",
    "write_simulation",
]
