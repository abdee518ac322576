"""Async `$import` (Prefer: respond-async): 202 + Content-Location, status polling, PHI-free manifest, DELETE."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from fastapi.testclient import TestClient

from careloop.settings import Settings
from tests.ingestion.support import read_topic

ASYNC = {"Content-Type": "application/fhir+ndjson", "Prefer": "respond-async"}


def _wait(client: TestClient, url: str) -> dict:
    for _ in range(600):
        r = client.get(url)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202 and r.headers["X-Progress"].endswith("lines)")
        time.sleep(0.05)
    raise AssertionError("the $import job did not finish")


def test_async_import_reports_a_manifest_and_publishes(client: TestClient, settings: Settings) -> None:
    lines = [orjson.dumps({"resourceType": "Patient", "id": f"bulk{i}", "name": [{"family": "Secretname"}],
                           "identifier": [{"system": "urn:mrn", "value": f"SECRET-MRN-{i}"}]})
             for i in range(120)]  # fmt: skip
    lines.insert(5, b"{not json")
    lines.insert(9, orjson.dumps({"resourceType": "Observation", "id": "x", "status": "final", "code": {"text": "a"}}))
    body = b"\n".join(lines) + b"\n\n"

    def chunks():  # streamed upload
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    r = client.post("/fhir/$import", content=chunks(), headers=ASYNC)
    assert r.status_code == 202 and not r.content
    url = r.headers["Content-Location"]
    assert "/fhir/$import-status/" in url
    manifest = _wait(client, url)
    assert manifest["status"] == "completed" and manifest["lines"] == 123
    assert manifest["counts"] == {"accepted": 120, "duplicate": 0, "rejected": 2}
    assert {x["errorClass"] for x in manifest["deadLetterReasons"]} == {"MalformedJSON", "MissingPatient"}
    assert "SECRET" not in orjson.dumps(manifest).decode() and "Secretname" not in orjson.dumps(manifest).decode()
    assert len(read_topic(settings, "fhir")) == 120
    assert not list(settings.path("ingest", "import-spool").iterdir())  # the spooled body is removed

    assert client.delete(url).status_code == 202  # forget the finished job
    assert client.get(url).status_code == 404
    again = client.post("/fhir/$import", content=body, headers=ASYNC)
    assert _wait(client, again.headers["Content-Location"])["counts"]["duplicate"] == 120


def test_async_import_cancel_other_source_and_line_limit(client: TestClient, settings: Settings,
                                                          tmp_path: Path) -> None:  # fmt: skip
    from ingestion.apikeys import ApiKeys

    body = b"".join(orjson.dumps({"resourceType": "Patient", "id": f"c{i}"}) + b"\n" for i in range(3000))
    r = client.post("/fhir/$import", content=body, headers=ASYNC)
    url = r.headers["Content-Location"]
    other = ApiKeys(settings).create("someone-else")[1]
    assert client.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 404  # not their job
    assert client.delete(url).status_code == 202
    assert client.get(url).status_code == 404
    assert client.delete(url).status_code == 404

    long_line = b'{"resourceType":"Patient","id":"ok"}\n' + b'{"x":"' + b"a" * (settings.gateway_max_line_bytes + 10)
    r = client.post("/fhir/$import", content=long_line + b'"}\n', headers=ASYNC)
    manifest = _wait(client, r.headers["Content-Location"])
    assert manifest["status"] == "failed" and "exceeds the limit" in manifest["error"]
    assert manifest["counts"]["accepted"] == 1
