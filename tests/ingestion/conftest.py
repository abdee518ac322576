"""Ingestion fixtures: data folders, an API key and an in-process gateway client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from careloop.settings import Settings


@pytest.fixture(scope="session")
def synthea_dir(shared_data: Path) -> Path:
    return shared_data / "fhir" / "synthea_r4_bundles"


@pytest.fixture(scope="session")
def hl7_dir(shared_data: Path) -> Path:
    return shared_data / "fhir" / "hl7_r4_examples"


@pytest.fixture(scope="session")
def dicom_dir(shared_data: Path) -> Path:
    return shared_data / "dicom"


@pytest.fixture
def api_key(settings: Settings) -> str:
    from ingestion.apikeys import ApiKeys

    return ApiKeys(settings).create("ehr-test")[1]


@pytest.fixture
def client(settings: Settings, api_key: str) -> Iterator[TestClient]:
    from ingestion.gateway import create_app

    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {api_key}"}) as c:
        yield c
