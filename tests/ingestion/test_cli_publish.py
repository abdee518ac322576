"""`careloop publish` and `careloop keys` end to end: summary, reasons, exit codes, --strict, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
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


def _by_source(settings: Settings, topic: str, source: str) -> list[Any]:
    return [e for e in read_topic(settings, topic) if e.headers.source_system == source]


def test_publish_mixed_fhir_files_pipelined_equals_in_process(
    settings: Settings, tmp_path: Path, hl7_dir: Path, synthea_dir: Path
) -> None:
    """Bundle runs (pipelined through the workers) broken by a single resource, an NDJSON file and a non-JSON file:
    the same counts, reasons and events as everything in-process, file by file."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    small = sorted((p for p in synthea_dir.glob("*.json") if not p.name.startswith(("practitioner", "hospital"))),
                   key=lambda p: p.stat().st_size)[:2]  # fmt: skip
    (folder / "a1.json").write_bytes(small[0].read_bytes())
    (folder / "a2.json").write_bytes((hl7_dir / "bundle-transaction.json").read_bytes())
    (folder / "b.json").write_bytes((hl7_dir / "observation-example.json").read_bytes())
    (folder / "c.json").write_bytes(small[1].read_bytes())
    (folder / "d.ndjson").write_bytes((hl7_dir / "patient-example.json").read_bytes().replace(b"\n", b"") + b"\n{x\n")
    (folder / "e.json").write_bytes(b"not json")
    (folder / "f.json").write_bytes(small[0].read_bytes())  # the same Bundle again: duplicates
    runner = CliRunner()
    results = {}
    for source, workers in (("mixed-in-process", "0"), ("mixed-pooled", "2")):
        r = runner.invoke(app, ["publish", "fhir", str(folder), "--source", source, "--workers", workers])
        assert r.exit_code == 0, r.output
        reasons = sorted(line for line in r.output.splitlines() if "│" in line and "error class" not in line)
        events = sorted((str(e.key), orjson.dumps(e.value, option=orjson.OPT_SORT_KEYS))
                        for e in _by_source(settings, "fhir", source) if "lastUpdated" not in str(e.value))  # fmt: skip
        results[source] = (_summary(r.output), reasons, events, len(_by_source(settings, "deadletter", source)))
    assert results["mixed-in-process"] == results["mixed-pooled"]
    files, accepted, dups, rejected = results["mixed-pooled"][0]
    assert files == 7 and accepted > 100 and dups >= 50 and rejected >= 2
    assert results["mixed-pooled"][3] == rejected


def test_publish_dicom_workers_option(settings: Settings, dicom_dir: Path) -> None:
    runner = CliRunner()
    pooled = runner.invoke(app, ["publish", "dicom", str(dicom_dir), "--source", "pacs-w", "--workers", "2"])
    single = runner.invoke(app, ["publish", "dicom", str(dicom_dir), "--source", "pacs-0", "--workers", "0"])
    assert pooled.exit_code == 0 and single.exit_code == 0, pooled.output + single.output
    assert _summary(pooled.output) == _summary(single.output)
    assert "burned" in pooled.output.lower() or "truncated" in pooled.output.lower()
    assert len(_by_source(settings, "dicom", "pacs-w")) == _summary(pooled.output)[1]
    strict = runner.invoke(app, ["publish", "dicom", str(dicom_dir), "--source", "pacs-s", "--strict"])
    assert strict.exit_code == 2
    bad = runner.invoke(app, ["publish", "dicom", str(dicom_dir), "--workers", "-1"])
    assert bad.exit_code != 0
