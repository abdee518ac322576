"""The columnar form of a mapped batch (`Prepared`), built by the mapping worker: chunked through Beam it equals
the whole-batch form, and committing it gives exactly the lake that committing the result dicts gives."""

from __future__ import annotations

import copy

import pytest

from careloop.duck import connect
from transforms.lake_writer import LakeWriter, concat_batches, merge, prepare
from transforms.pipeline import FeedMapper, map_envelope, read_prepared, run_batch, write_batch

from .fhirdata import envelope, synthea_envelopes


def table_rows(p) -> dict[str, list]:
    """Every Arrow table of a Prepared as sorted rows (order-free comparison; columns by name)."""
    out = {"src": p.src, "row_map": p.row_map, "flags": p.flags, **{f"omop.{t}": d for t, d in p.tables.items()}}
    return {k: sorted(map(repr, (sorted(r.items()) for r in v.to_pylist()))) for k, v in out.items()}


def test_beam_chunks_merge_to_the_whole_batch_form(shared_data, vocab, tmp_path) -> None:
    envs = synthea_envelopes(shared_data, 2)
    whole = prepare([map_envelope(e, vocab) for e in envs])
    chunked = run_batch(envs, str(tmp_path / "w"), vocab, chunk=97, columnar=True)
    assert chunked.size == whole.size == len(envs)
    assert chunked.src["_res"].to_pylist() == list(range(len(envs)))  # batch positions, not chunk positions
    assert table_rows(chunked) == table_rows(whole)
    assert len(chunked.deadletters) == len(whole.deadletters)
    assert (chunked.min_event_time, chunked.max_event_time) == (whole.min_event_time, whole.max_event_time)
    parts = [prepare([map_envelope(e, vocab) for e in envs[i : i + 50]], i) for i in range(0, len(envs), 50)]
    assert table_rows(merge(parts[::-1])) == table_rows(whole)  # chunk order does not matter


def test_long_lived_feed_pipeline_maps_batch_after_batch(shared_data, vocab, tmp_path) -> None:
    """The mapping worker's one Beam pipeline: each batch file fed to it gives the whole-batch form; a batch that
    cannot be read fails alone, and the pipeline keeps mapping the next ones."""
    envs = synthea_envelopes(shared_data, 2)
    half = len(envs) // 2
    feed = FeedMapper(vocab, chunk=83)
    try:
        for i, batch in enumerate((envs[:half], envs[half:])):
            write_batch(batch, str(tmp_path / f"b{i}.jsonl"))
            got = read_prepared(feed.map_file(str(tmp_path / f"b{i}.jsonl"), str(tmp_path / f"out{i}")))
            assert table_rows(got) == table_rows(prepare([map_envelope(e, vocab) for e in batch]))
        with pytest.raises(FileNotFoundError):
            feed.map_file(str(tmp_path / "missing.jsonl"), str(tmp_path / "out-missing"))
        again = read_prepared(feed.map_file(str(tmp_path / "b0.jsonl"), str(tmp_path / "out-again")))
        assert again.size == half
    finally:
        feed.close()


def test_consecutive_batches_concatenate_to_one(shared_data, vocab) -> None:
    """The stream commits batches that wait for the commit thread together: their indexes must not collide."""
    results = [map_envelope(e, vocab) for e in synthea_envelopes(shared_data, 2)]
    cut = len(results) // 3
    joined = concat_batches([prepare(results[:cut]), prepare(results[cut:])])
    assert table_rows(joined) == table_rows(prepare(results))
    assert joined.src["_res"].to_pylist() == list(range(len(results)))


def lake_state(con) -> dict[str, list]:
    tables = ["person", "visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence",
              "measurement", "observation", "observation_period", "fhir_row_map", "dq_flags"]  # fmt: skip
    cols = {"dq_flags": "omop_table, omop_row_id, check_name, detail"}
    out = {t: sorted(map(repr, con.execute(f"SELECT {cols.get(t, '*')} FROM omop.{t}").fetchall())) for t in tables}
    out["versions"] = sorted(
        con.execute(
            "SELECT resource_type, resource_id, version_id, version_rank, last_updated, "
            "deleted, content_hash, kafka_ref FROM omop.fhir_source_versions"
        ).fetchall()
    )
    return out


def test_committing_prepared_equals_committing_results(omop_settings, shared_data, vocab, tmp_path) -> None:
    """Same batches (first load, re-delivery, newer and late older versions in one batch, deletes) through the
    result-dict path in one lake and the worker's columnar path (Beam, small chunks) in a copy: same lake."""
    envs = synthea_envelopes(shared_data, 2)
    obs = [e["value"] for e in envs if e["value"]["resourceType"] == "Observation"][:12]
    newer, offset = [], len(envs)
    for v in (3, 2):  # newer then a late older version, in the same batch
        for r in obs[:6]:
            r = copy.deepcopy(r)
            r["meta"] = {"versionId": str(v), "lastUpdated": f"2025-01-0{v}T00:00:00Z"}
            offset += 1
            newer.append(envelope(r, offset))
    deletes = [envelope(r, offset + 1 + i, op="delete") for i, r in enumerate(obs[6:9])]
    batches = [envs, envs[:40] + newer + deletes]

    con = connect(omop_settings)
    writer = LakeWriter(con)
    for b in batches:
        writer.commit([map_envelope(e, vocab) for e in b])
    expected = lake_state(con)
    con.execute("DELETE FROM omop.fhir_source_versions")  # the same lake, emptied of what the batches wrote
    for t in expected:
        if t != "versions":
            con.execute(f"DELETE FROM omop.{t}")
    for t in ("death", "image_occurrence", "provider", "care_site", "skipped_resources"):
        con.execute(f"DELETE FROM omop.{t}")
    outcomes = [writer.commit(run_batch(b, str(tmp_path / f"w{i}"), vocab, chunk=31, columnar=True))
                for i, b in enumerate(batches)]  # fmt: skip
    assert lake_state(con) == expected
    assert outcomes[1].stale >= 6 + 40  # the late older versions and the re-delivered events changed nothing
    assert outcomes[1].deleted == 3
    con.close()


def test_odd_metadata_types_do_not_break_a_batch(omop_settings, shared_data, vocab) -> None:
    """`meta.lastUpdated` / `versionId` come from the payload and may be any JSON type: one such event must not
    make the batch's columns untypeable (which would stop the stream on that batch forever)."""
    envs = synthea_envelopes(shared_data, 1)
    odd = copy.deepcopy(next(e for e in envs if e["value"]["resourceType"] == "Observation"))
    odd["value"]["id"] = "odd-meta"
    odd["value"]["meta"] = {"versionId": 7, "lastUpdated": 20240101}
    odd["offset"] = 10_000
    usual = copy.deepcopy(odd)
    usual["value"]["id"], usual["offset"] = "usual-meta", 10_001
    usual["value"]["meta"] = {"versionId": "1", "lastUpdated": "2024-01-02T00:00:00Z"}
    envs = [*envs, usual]
    con = connect(omop_settings)
    out = LakeWriter(con).commit([map_envelope(e, vocab) for e in [*envs, odd]])
    assert out.applied + out.skipped + out.deleted + len(out.deadletters) + out.stale == len(envs) + 1
    assert con.execute("SELECT version_id, version_rank, last_updated::DATE::VARCHAR FROM omop.fhir_source_versions "
                       "WHERE resource_id = 'odd-meta'").fetchall() == [("7", 7, "2024-01-01")]  # fmt: skip
    con.close()
