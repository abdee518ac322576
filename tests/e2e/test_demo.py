"""`careloop demo` end to end, then a PHI scan of everything it left behind (outside the vault) and of every topic."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import orjson
import pytest

from careloop.broker import LocalBroker
from careloop.settings import load_settings
from tests.foundation.cli_helpers import run_cli

PATIENTS, MONTHS, SEED = 6, 6, 11
# Holders of identified data by design: the encrypted vault, the keys, and the simulator's oracle (ground truth
# written beside the pipeline for evaluation; never part of the event stream).
EXEMPT = ("vault", "keys", "demo")
# OHDSI vocabulary tables are reference data loaded from the Athena export; their codes collide with 5-digit ZIPs.
VOCABULARY = {"concept", "concept_relationship", "concept_ancestor", "concept_synonym", "concept_class", "vocabulary",
              "domain", "relationship", "drug_strength", "source_to_concept_map"}  # fmt: skip


def _identifiers(out: Path) -> set[str]:
    """Every name, identifier, address, phone, e-mail and birth date the simulator put into its inputs."""
    import pydicom

    found: set[str] = set()

    def walk(resource: dict) -> None:
        if resource.get("resourceType") != "Patient":
            return
        for name in resource.get("name", []):
            found.update(name.get("given", []))
            found.add(name.get("family", ""))
        for ident in resource.get("identifier", []):
            found.add(ident.get("value", ""))
        for addr in resource.get("address", []):
            found.update(addr.get("line", []))
            found.update([addr.get("city", ""), addr.get("postalCode", "")])
        for tel in resource.get("telecom", []):
            found.add(tel.get("value", ""))
        found.add(resource.get("birthDate", ""))
        found.add(resource.get("id", ""))

    for path in (out / "fhir").rglob("*.json"):
        bundle = json.loads(path.read_text())
        for entry in bundle.get("entry", []):
            walk(entry.get("resource", {}))
    for path in (out / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "AccessionNumber",
                   "ReferringPhysicianName", "OperatorsName", "StudyInstanceUID", "SOPInstanceUID"):  # fmt: skip
            value = str(ds.get(kw, "") or "")
            found.update(p for p in re.split(r"\^", value) if p)
            found.add(value)
    return {v for v in found if len(v) >= 4}


def _found(secret: str, text: str) -> bool:
    """Long identifiers match anywhere; short or all-digit ones (ZIP codes, house numbers) only as whole tokens,
    since any 5 digits occur by chance inside 63-bit OMOP ids and hex pseudonyms."""
    if len(secret) >= 8 and not secret.isdigit():
        return secret in text
    return re.search(rf"(?<![0-9A-Za-z.]){re.escape(secret)}(?![0-9A-Za-z.])", text) is not None


def _text_of(path: Path) -> str:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return orjson.dumps(pq.read_table(path).to_pylist(), default=str).decode()
    return path.read_bytes().decode("latin-1")


@pytest.mark.slow
def test_demo_runs_the_loop_and_leaks_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    home = tmp_path / "home"
    # fixed keys: pseudonyms (and so OMOP ids) are the same on every run, so the scan is reproducible
    env = {"CARELOOP_HOME": str(home), "CARELOOP_PSEUDONYM_KEY": "5a" * 32, "CARELOOP_VAULT_KEY": "c3" * 32}
    res = run_cli("demo", "--patients", str(PATIENTS), "--months", str(MONTHS), "--seed", str(SEED),
                  "--keep-broker", env=env, timeout=900)  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    try:
        assert res.returncode == 0, res.stderr[-3000:]
        assert "Where did one measurement come from?" in res.stdout
        persons = run_cli("sql", "select count(*) from omop.person", "-f", "csv", env=env)
        assert persons.stdout.splitlines()[-1] == str(PATIENTS)
        trace = run_cli("sql", "select count(*) from lineage.edges where src_kind = 'kafka'", "-f", "csv", env=env)
        assert int(trace.stdout.splitlines()[-1]) > 0

        import pyarrow.parquet as pq

        parts = list((home / "features" / "live" / "offline" / "demographics").glob("s*.parquet"))
        assert parts, "the stream's feature hook pushed nothing"
        pushed = {p for part in parts for p in pq.read_table(part, columns=["person_id"]).column(0).to_pylist()}
        assert len(pushed) == PATIENTS

        secrets = _identifiers_for(tmp_path)
        assert len(secrets) > PATIENTS * 5  # the scan has something to look for

        leaks: list[tuple[str, str]] = []
        for path in home.rglob("*"):
            rel = path.relative_to(home)
            if not path.is_file() or rel.parts[0] in EXEMPT or path.suffix in (".log",):
                continue
            if rel.parts[:3] == ("lake", "data", "omop") and rel.parts[3] in VOCABULARY:
                continue
            text = _text_of(path)
            leaks.extend((str(rel), s) for s in secrets if _found(s, text))
        for value in _all_topic_values(settings):
            leaks.extend(("kafka", s) for s in secrets if _found(s, value))
        assert leaks == [], "\n".join(f"{w}: {s}" for w, s in leaks[:60])
    finally:
        LocalBroker(settings).stop()


def _identifiers_for(tmp_path: Path) -> set[str]:
    from ingestion.simulator import SimulationConfig, write_simulation

    out = tmp_path / "same-simulation"
    write_simulation(SimulationConfig(patients=PATIENTS, sites=2, months=MONTHS, seed=SEED), out)
    return _identifiers(out)


def _all_topic_values(settings) -> list[str]:
    from careloop.kafka import EventConsumer
    from careloop.topics import registry

    values: list[str] = []
    with EventConsumer(settings, [t.name for t in registry(settings)], group_id=f"scan-{uuid.uuid4().hex}") as c:
        idle_since = time.monotonic()
        deadline = time.monotonic() + 120
        while time.monotonic() - idle_since < 6 and time.monotonic() < deadline:
            batch = c.poll(timeout_ms=1000)
            if batch:
                idle_since = time.monotonic()
            for ev in batch:
                values.append(orjson.dumps(ev.value).decode() + (ev.key or ""))
    assert values, "no Kafka messages to scan"
    return values
