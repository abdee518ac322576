"""`--publish` through the real ingestion core and a real broker: counts, dedup of duplicate deliveries, order."""

from __future__ import annotations

import csv

import orjson

from careloop.kafka import EventConsumer
from ingestion.pseudonym import Pseudonymizer
from ingestion.simulator import RealismConfig, SimulationConfig
from ingestion.simulator.publish import publish_simulation


def test_publish_through_the_ingestor_dedupes_duplicates(settings, tmp_path):
    realism = RealismConfig(duplicate=0.05, late=0.05, update=0.05, delete=0.02, entered_in_error=0.02)
    config = SimulationConfig(patients=8, sites=2, months=2, seed=3, realism=realism)
    seen: list[tuple[int, int | None]] = []
    summary = publish_simulation(
        config, settings=settings, truth_dir=tmp_path, on_progress=lambda d, t, i: seen.append((d, t))
    )
    total = summary.resources + summary.deletes + summary.dicom_files
    assert summary.submitted == total > 100
    assert summary.outcomes.get("rejected", 0) == 0, summary.rejected_reasons
    assert summary.duplicates_sent == summary.realism["duplicate"] > 0
    assert summary.outcomes["duplicate"] >= summary.duplicates_sent
    assert summary.outcomes["accepted"] + summary.outcomes["duplicate"] == total
    with open(tmp_path / "truth" / "patients.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    assert len(truth) == 8
    consumer = EventConsumer(settings, [settings.topic("fhir")], group_id="sim-test")
    events = []
    for _ in range(30):
        events.extend(consumer.poll())
        if len(events) >= summary.outcomes["accepted"] - summary.deletes - summary.dicom_files:
            break
    consumer.close()
    assert seen and seen[-1] == (total, total)
    assert len(events) > 100, "the fhir topic should hold the accepted resources"
    # the truth joins the stream through the pseudonymizer, and no identifier of the truth leaks into it
    pseudo = Pseudonymizer.from_settings(settings)
    assert {e.key for e in events} == {pseudo.person(t["patient_id"]) for t in truth}
    blob = b"".join(orjson.dumps(e.value) for e in events)
    for t in truth:
        assert t["mrn"].encode() not in blob and t["patient_id"].encode() not in blob


def test_written_files_are_accepted_by_careloop_publish(settings, tmp_path, capsys):
    """The --out files replay through the file publisher with nothing rejected (both layouts, and the DICOM)."""
    import pytest

    from careloop.cli import main
    from ingestion.simulator import write_simulation

    config = SimulationConfig(patients=6, sites=2, months=3, seed=12, realism=RealismConfig(duplicate=0.05))
    summaries = {  # different seeds: the second replay must not be deduplicated against the first
        fmt: write_simulation(config.model_copy(update={"seed": seed}), tmp_path / fmt, fmt)
        for seed, fmt in ((12, "ndjson"), (13, "bundle"))
    }
    for fmt in ("ndjson", "bundle"):
        with pytest.raises(SystemExit) as exc:
            main(["publish", "fhir", str(tmp_path / fmt / "fhir"), "--strict", "--source", f"sim-{fmt}"])
        out = capsys.readouterr().out
        assert exc.value.code == 0, out
        row = [line for line in out.splitlines() if "│" in line and any(ch.isdigit() for ch in line)][-1]
        _files, accepted, duplicates, dead = (int(x) for x in row.replace("│", " ").split())
        assert dead == 0 and accepted + duplicates == summaries[fmt].resources + summaries[fmt].deletes
        assert duplicates >= summaries[fmt].realism.get("duplicate", 0) > 0
    if summaries["ndjson"].dicom_files:
        with pytest.raises(SystemExit) as exc:
            main(["publish", "dicom", str(tmp_path / "ndjson" / "dicom"), "--strict"])
        assert exc.value.code == 0, capsys.readouterr().out


def test_pacer_spaces_deliveries_at_the_rate_and_never_sleeps_when_behind() -> None:
    from ingestion.simulator.publish import Pacer

    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pacer = Pacer(4.0, start=100.0, clock=lambda: now[0], sleep=sleep)
    for n in range(1, 5):  # instant submissions: each waits for its slot, 0.25 s apart
        pacer.wait(n)
        assert now[0] == 100.0 + n * 0.25
    now[0] += 2.0  # a slow gateway call: now behind schedule
    pacer.wait(5)
    assert len(slept) == 4  # behind: no sleep
    unpaced = Pacer(0.0, start=0.0, clock=lambda: 0.0, sleep=sleep)
    unpaced.wait(1000)
    assert len(slept) == 4
