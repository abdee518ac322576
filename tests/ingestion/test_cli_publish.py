"""`careloop publish` and `careloop keys` end to end: summary, reasons, exit codes, --strict, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from careloop.cli import app
from careloop.settings import Settings
from tests.ingestion.support import read_topic
from tests.ingestion.test_gateway import EXPECTED_REJECTIONS

REJECTED = sum(EXPECTED_REJECTIONS.values())


def _summary(output: str) -> list[int]:
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if len(cells) == 4 and all(c.isdigit() for c in cells):
            return [int(c) for c in cells]
    raise AssertionError(output)


def test_publish_hl7_examples_reports_reasons_and_strict_exit(settings: Settings, hl7_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["publish", "fhir", str(hl7_dir), "--source", "hl7-files"])
    assert result.exit_code == 0, result.output
    files, accepted, dups, rejected = _summary(result.output)
    assert files == 69 and rejected == REJECTED  # the same reasoned rejections as through the gateway
    assert "MissingPatient" in result.output and "UnsupportedBundle" in result.output
    assert len(read_topic(settings, "deadletter")) == REJECTED
    strict = runner.invoke(app, ["publish", "fhir", str(hl7_dir), "--strict", "--source", "hl7-files",
                                 "--workers", "1"])  # fmt: skip
    assert strict.exit_code == 2
    again = _summary(strict.output)
    # same source: all duplicates, except the two DELETEs of bundle-transaction.json (a delete is a new event each
    # time): Patient/234, and the conditional Patient?identifier=123456 that now resolves (that Patient came later in
    # the first run), so one rejection fewer
    assert again[1] == 2 and again[2] == accepted + dups - 1 and again[3] == REJECTED - 1


def test_publish_ndjson_and_single_files(settings: Settings, tmp_path: Path, hl7_dir: Path) -> None:
    nd = tmp_path / "bulk.ndjson"
    nd.write_bytes((hl7_dir / "patient-example.json").read_bytes().replace(b"\n", b"") + b"\n{broken\n\n")
    result = CliRunner().invoke(app, ["publish", "fhir", str(nd), str(hl7_dir / "observation-example.json")])
    assert result.exit_code == 0, result.output
    assert _summary(result.output) == [2, 2, 0, 1]
    assert "MalformedJSON" in result.output


def test_publish_dicom_folder(settings: Settings, dicom_dir: Path) -> None:
    result = CliRunner().invoke(app, ["publish", "dicom", str(dicom_dir), "--source", "pacs"])
    assert result.exit_code == 0, result.output
    files, accepted, dups, rejected = _summary(result.output)
    n = len([p for p in dicom_dir.iterdir() if p.suffix == ".dcm"])
    assert files == n and accepted + dups + rejected == n and accepted >= 10 and rejected >= 1
    assert len(read_topic(settings, "dicom")) == accepted


def test_keys_create_list_revoke(settings: Settings) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--source", "epic-prod"])
    assert created.exit_code == 0
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("clk_")
    listed = runner.invoke(app, ["keys", "list"])
    assert "epic-prod" in listed.output and token not in listed.output
    stored = (settings.home_dir / "keys" / "api_keys.json").read_text()
    assert token not in stored and token.split("_", 2)[2] not in stored
    key_id = token.split("_")[1]
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    from ingestion.apikeys import ApiKeys

    assert ApiKeys(settings).verify(token) is None


def test_no_broker_is_an_operational_failure(home: Path, hl7_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")} | {"CARELOOP_HOME": str(home)}
    cli = Path(sys.executable).parent / "careloop"
    proc = subprocess.run([str(cli), "publish", "fhir", str(hl7_dir / "patient-example.json")], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "no Kafka broker" in proc.stderr


@pytest.mark.parametrize(
    "args", [["publish", "fhir", "/nonexistent/path"], ["publish", "fhir", ".", "--source", "a b"]]
)
def test_bad_arguments_fail_with_one_line(home: Path, args: list[str]) -> None:
    cli = Path(sys.executable).parent / "careloop"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")} | {"CARELOOP_HOME": str(home)}
    proc = subprocess.run([str(cli), *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") <= 2 and "error:" in proc.stderr


def test_gateway_command_serves_http(settings: Settings) -> None:
    import socket
    import time

    import httpx

    from ingestion.apikeys import ApiKeys

    key = ApiKeys(settings).create("live")[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = Path(sys.executable).parent / "careloop"
    proc = subprocess.Popen([str(cli), "gateway", "--host", "127.0.0.1", "--port", str(port)], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = httpx.post(f"{base}/fhir/Patient", content=b'{"resourceType":"Patient","id":"live-1"}',
                       headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {key}"})  # fmt: skip
        assert r.status_code == 201, r.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    events = read_topic(settings, "fhir")
    assert len(events) == 1 and events[0].headers.source_system == "live"
