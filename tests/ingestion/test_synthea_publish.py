"""All 52 Synthea bundles (+ their Organization/Practitioner bundles) through `careloop publish fhir` on a real broker:
counts, PHI scan of every topic and of CARELOOP_HOME, person linkage, date shift, references, duplicates, lineage."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from careloop.events import content_hash
from tests.ingestion.support import collect_phi, leaks, message_strings, new_prefix, read_all, resources_of, scan_home

pytestmark = pytest.mark.slow


def _entries(files: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for f in files:
        bundle = orjson.loads(f.read_bytes())
        out.extend((f, e["resource"]) for e in bundle["entry"])
    return out


@pytest.fixture(scope="module")
def run(broker: str, synthea_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from careloop.cli import app
    from careloop.settings import load_settings
    from careloop.topics import ensure_topics
    from ingestion.pseudonym import Pseudonymizer

    mp = pytest.MonkeyPatch()
    for key in list(os.environ):
        if key.startswith("CARELOOP_"):
            mp.delenv(key)
    home = tmp_path_factory.mktemp("synthea") / "home"
    mp.setenv("CARELOOP_HOME", str(home))
    mp.setenv("CARELOOP_KAFKA_BOOTSTRAP", broker)
    mp.setenv("CARELOOP_TOPIC_PREFIX", new_prefix())
    try:
        settings = load_settings()
        ensure_topics(settings)
        first = CliRunner().invoke(app, ["publish", "fhir", str(synthea_dir), "--source", "synthea-ehr"])
        messages = read_all(settings)
        second = CliRunner().invoke(app, ["publish", "fhir", str(synthea_dir), "--source", "synthea-ehr"])
        after = read_all(settings)
        files = sorted(synthea_dir.glob("*.json"))
        yield SimpleNamespace(settings=settings, home=home, first=first, second=second, messages=messages,
                              after=after, files=files, entries=_entries(files),
                              pseudo=Pseudonymizer.from_settings(settings))  # fmt: skip
    finally:
        mp.undo()


def _row(output: str) -> list[int]:
    """The numbers of the summary row (files, accepted, duplicates, dead-lettered)."""
    for line in output.splitlines():
        nums = re.findall(r"\d+", line)
        if len(nums) == 4 and "│" in line:
            return [int(n) for n in nums]
    raise AssertionError(output)


def test_every_synthea_resource_is_accepted_once(run) -> None:
    assert run.first.exit_code == 0, run.first.output
    files, accepted, dups, rejected = _row(run.first.output)
    assert files == len(run.files) == 54
    # identical content (the same Organization/Practitioner in several files) is published once
    unique = len({content_hash(r) for _, r in run.entries})
    assert unique < len(run.entries)
    assert accepted == unique and dups == len(run.entries) - unique and rejected == 0
    assert len(run.messages["fhir"]) == unique
    assert run.messages["deadletter"] == []


def test_republishing_gives_duplicates_and_publishes_nothing(run) -> None:
    assert run.second.exit_code == 0, run.second.output
    assert _row(run.second.output) == [len(run.files), 0, len(run.entries), 0]
    assert len(run.after["fhir"]) == len(run.messages["fhir"])


def test_no_phi_in_any_topic_or_file_outside_the_vault(run) -> None:
    inputs = [r for f in run.files for r in resources_of(f)]
    phi = collect_phi(inputs)
    assert len(phi["name"]) > 100 and len(phi["identifier"]) > 100 and len(phi["address"]) > 100
    texts = [t for events in run.after.values() for t in message_strings(events)]
    assert leaks(texts, phi) == []
    # birth dates: the Patient messages carry only shifted ones
    originals = {r["id"]: r["birthDate"] for _, r in run.entries if r["resourceType"] == "Patient"}
    shifted = {e.value["id"]: e.value.get("birthDate") for e in run.messages["fhir"]
               if e.value["resourceType"] == "Patient"}  # fmt: skip
    for rid, born in originals.items():
        assert shifted[run.pseudo.person(rid)] != born
    assert scan_home(run.home, phi) == []


def test_patient_and_all_its_resources_share_one_person_and_one_date_shift(run) -> None:
    by_id = {(e.value["resourceType"], e.value["id"]): e for e in run.messages["fhir"]}
    checked = 0
    for f in run.files:
        bundle = orjson.loads(f.read_bytes())
        patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
        if not patients:
            continue
        person = run.pseudo.person(patients[0]["id"])
        days = run.pseudo.date_shift_days(person)
        for e in bundle["entry"]:
            r = e["resource"]
            rtype = r["resourceType"]
            if rtype in ("Organization", "Practitioner"):
                continue
            pid = person if rtype == "Patient" else run.pseudo.resource_id(rtype, r["id"])
            event = by_id[(rtype, pid)]
            assert event.key == person
            if rtype == "Encounter":
                from datetime import datetime

                before = datetime.fromisoformat(r["period"]["start"])
                after = datetime.fromisoformat(event.value["period"]["start"])
                assert (after - before).days == days and after.time() == before.time()
                checked += 1
    assert checked > 500


def test_references_resolve_to_published_resources(run) -> None:
    published = {f"{e.value['resourceType']}/{e.value['id']}" for e in run.messages["fhir"]}
    refs: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            if isinstance(obj.get("reference"), str):
                refs.append(obj["reference"])
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    for e in run.messages["fhir"]:
        walk({k: v for k, v in e.value.items() if k != "contained"})
    assert len(refs) > 10_000
    dangling = [r for r in refs if not r.startswith("#") and r not in published]
    assert dangling == []


def test_lineage_records_every_event_and_its_offset(run) -> None:
    from careloop.duck import connect

    con = connect(run.settings)
    rows = dict(con.execute("SELECT status, count(*) FROM lineage.ingest_events GROUP BY status").fetchall())
    unique = len({content_hash(r) for _, r in run.entries})
    assert rows == {"accepted": unique, "duplicate": 2 * len(run.entries) - unique}
    edges = con.execute("SELECT count(*) FROM lineage.edges WHERE relation = 'published_as'").fetchone()[0]
    assert edges == unique
    n = con.execute("SELECT count(*) FROM lineage.ingest_events WHERE status='accepted' AND \"offset\" IS NULL")
    assert n.fetchone()[0] == 0
