from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ingestion.simulator import SimulationConfig, generate_patient


@pytest.fixture(scope="session")
def eunomia_codes(shared_data: Path) -> set[tuple[str, str]]:
    with open(shared_data / "omop" / "eunomia_synthea27nj" / "CONCEPT.csv", newline="") as f:
        return {(r["vocabulary_id"], r["concept_code"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="session")
def sample_records():
    """~50 patients generated in process (shared by the validation and coding tests)."""
    config = SimulationConfig(patients=50, sites=3, months=12, seed=11)
    return [generate_patient(config, i) for i in range(config.patients)]
