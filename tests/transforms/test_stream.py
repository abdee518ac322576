"""The streaming runner against the real broker and the real lake: Synthea patients in, OMOP counts out,
re-publishing changes nothing, hooks run after the lake commit and gate the offset commit."""

from __future__ import annotations

import pytest

from careloop.duck import connect
from careloop.kafka import EventProducer
from transforms import BatchCommit, HookFailed, StreamRunner

from .fhirdata import actual_rows, bundle_resources, expected_rows, fhir_event


def synthea(shared_data, n: int) -> list[dict]:
    files = sorted((shared_data / "fhir" / "synthea_r4_bundles").glob("*_*.json"))[:n]
    return [r for f in files for r in bundle_resources(f)]


def publish(settings, resources, op="upsert") -> None:
    with EventProducer(settings) as p:
        p.send_many(settings.topic("fhir"), [fhir_event(r, op=op) for r in resources])


def test_stream_counts_match_input_and_republish_changes_nothing(stream_settings, shared_data) -> None:
    resources = synthea(shared_data, 4)
    publish(stream_settings, resources)
    seen: list[BatchCommit] = []
    summary = StreamRunner(stream_settings, batch_size=2000, max_wait_ms=300, on_batch_committed=[seen.append]).run(
        until_idle=3
    )
    assert summary.events == len(resources)
    con = connect(stream_settings)
    expected = expected_rows(resources)
    assert actual_rows(con) == expected
    patients = {r["id"] for r in resources if r["resourceType"] == "Patient"}
    assert set().union(*(c.person_keys for c in seen)) >= patients
    assert all(c.snapshot_id for c in seen)
    # lineage: every OMOP row has an edge from its FHIR resource, every event from its Kafka offset
    rows = con.execute("SELECT count(*) FROM omop.fhir_row_map").fetchone()[0]
    edges = con.execute("SELECT count(*) FROM lineage.edges WHERE relation = 'mapped_to'").fetchone()[0]
    assert edges == rows
    status = con.execute("SELECT sum(events), count(*) FROM omop.stream_status").fetchone()
    assert status[0] == len(resources) and status[1] == summary.batches
    skipped = dict(con.execute("SELECT resource_type, sum(n) FROM omop.skipped_resources GROUP BY 1").fetchall())
    assert skipped["Claim"] == sum(r["resourceType"] == "Claim" for r in resources)
    con.close()

    publish(stream_settings, resources)  # the same input again
    again = StreamRunner(stream_settings, batch_size=2000, max_wait_ms=300).run(until_idle=3)
    assert again.events == len(resources) and again.rows_written == 0
    con = connect(stream_settings)
    assert actual_rows(con) == expected
    stale = con.execute("SELECT stale FROM omop.stream_status ORDER BY committed_at DESC LIMIT 1").fetchone()[0]
    assert stale > 0


def test_failing_hook_blocks_offset_commit_then_batch_is_replayed(stream_settings, shared_data) -> None:
    resources = synthea(shared_data, 1)
    publish(stream_settings, resources)

    def broken(commit: BatchCommit) -> None:
        raise RuntimeError("feature store down")

    with pytest.raises(HookFailed, match="offsets not committed"):
        StreamRunner(stream_settings, on_batch_committed=[broken], hook_attempts=2, hook_backoff_s=0.01).run(
            until_idle=3
        )
    seen: list[BatchCommit] = []
    summary = StreamRunner(stream_settings, on_batch_committed=[seen.append]).run(until_idle=3)
    assert summary.events == len(resources)  # replayed: offsets were not committed
    patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    assert any(patient in c.person_keys for c in seen)
    assert sum(c.rows_written for c in seen) == 0  # the lake already had it: replay changes nothing


def test_pipelined_runner_commits_offsets_batch_by_batch(stream_settings, shared_data) -> None:
    """With a mapping worker, later batches are polled and mapped while one commits; a failure must leave their
    offsets uncommitted, so exactly the batches after the last committed one are replayed."""
    resources = synthea(shared_data, 3)
    assert len(resources) > 300  # several batches of 50
    publish(stream_settings, resources)
    committed: list[int] = []

    def fail_third(commit: BatchCommit) -> None:
        if len(committed) == 2:
            raise RuntimeError("feature store down")
        committed.append(commit.events)

    runner = StreamRunner(stream_settings, batch_size=50, max_wait_ms=100, map_workers=1,
                          on_batch_committed=[fail_third], hook_attempts=1)  # fmt: skip
    with pytest.raises(HookFailed):
        runner.run(until_idle=3)
    assert len(committed) == 2
    rest = StreamRunner(stream_settings, batch_size=5000, map_workers=0).run(until_idle=3)
    assert rest.events == len(resources) - sum(committed)
    con = connect(stream_settings)
    assert actual_rows(con) == expected_rows(resources)
    con.close()


def test_values_that_are_not_json_become_dead_letters(stream_settings, shared_data) -> None:
    """A foreign producer's garbage is a dead letter with the parser's reason; pretty-printed JSON still maps."""
    import orjson

    from careloop.kafka import read_topic

    patient = next(r for r in synthea(shared_data, 1) if r["resourceType"] == "Patient")
    good = fhir_event(patient)
    bad = fhir_event({**patient, "id": "not-json"})
    with EventProducer(stream_settings) as p:
        topic = stream_settings.topic("fhir")
        p.send_raw(topic, bad.key, b'{"resourceType": "Patient", "id": ', bad.headers.to_kafka()).get()
        p.send_raw(topic, good.key, orjson.dumps(patient, option=orjson.OPT_INDENT_2), good.headers.to_kafka()).get()
    summary = StreamRunner(stream_settings, map_workers=1).run(until_idle=3)
    assert summary.events == 2 and summary.dead_letters == 1
    con = connect(stream_settings)
    assert con.execute("SELECT count(*) FROM omop.person").fetchone()[0] == 1
    con.close()
    letters = [e.value for e in read_topic(stream_settings, stream_settings.topic("deadletter"))]
    assert len(letters) == 1
    assert letters[0]["reason"].startswith("value is not valid JSON")
    assert letters[0]["original_event_id"] == str(bad.headers.event_id)


def test_batches_waiting_for_the_commit_thread_commit_together(stream_settings, shared_data) -> None:
    """Mapped batches that wait while a lake commit runs join the next commit (one transaction, one status row):
    the lake, lineage and offsets are exactly those of batch-by-batch commits."""
    resources = synthea(shared_data, 3)
    publish(stream_settings, resources)
    seen: list[BatchCommit] = []
    summary = StreamRunner(stream_settings, batch_size=60, max_wait_ms=100, map_workers=0,
                           on_batch_committed=[seen.append]).run(until_idle=3)  # fmt: skip
    assert summary.events == len(resources) == sum(c.events for c in seen)
    assert max(t["batches"] for t in summary.timings) > 1  # in-process mapping: later batches are mapped at once
    assert max(c.events for c in seen) > 60
    con = connect(stream_settings)
    assert actual_rows(con) == expected_rows(resources)
    rows = con.execute("SELECT count(*) FROM omop.fhir_row_map").fetchone()[0]
    assert con.execute("SELECT count(*) FROM lineage.edges WHERE relation = 'mapped_to'").fetchone()[0] == rows
    status = con.execute("SELECT sum(events), count(*) FROM omop.stream_status").fetchone()
    assert status[0] == len(resources) and status[1] == summary.batches == len(seen)
    con.close()
    again = StreamRunner(stream_settings, batch_size=5000, map_workers=0).run(until_idle=3)
    assert again.events == 0  # every offset was committed
