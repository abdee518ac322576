"""Feature store on real DuckLake + real Feast (DuckDB offline store, SQLite online store) with Eunomia OMOP data."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pandas as pd
import pytest

import feature_store as fs
from careloop.duck import transaction


def _late_measurement(con, person: int, when: datetime, concept: int, value: float, unit: int) -> int:
    """Insert one measurement (as the stream writer would) and return the new lake snapshot id."""
    new_id = con.execute("SELECT coalesce(max(measurement_id), 0) + 1 FROM omop.measurement").fetchall()[0][0]

    def body(c):
        c.execute(
            "INSERT INTO omop.measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
            "measurement_datetime, measurement_type_concept_id, value_as_number, unit_concept_id) "
            "VALUES (?, ?, ?, ?, ?, 32817, ?, ?)",
            [new_id, person, concept, when.date(), when.replace(tzinfo=None), value, unit],
        )

    transaction(con, body)
    return fs.current_snapshot(con)


def _entities(rows):
    return pd.DataFrame(
        {"person_id": [p for p, _ in rows], "event_timestamp": pd.to_datetime([t for _, t in rows], utc=True)}
    )


def test_apply_is_idempotent_and_tags_every_feature(fs_settings):
    first = fs.apply(fs_settings)
    again = fs.apply(fs_settings)
    assert first == again and first["FeatureView"] == len(fs.VIEWS) and first["FeatureService"] == len(fs.TASKS)
    store = fs.open_store(fs_settings)
    required = {
        "description",
        "unit",
        "source_concepts",
        "owner",
        "phi_class",
        "sensitive_role",
        "proxy_risk",
        "freshness_target",
        "used_by",
    }
    fields = [f for fv in store.list_feature_views() for f in fv.features]
    assert len(fields) == len(fs.FEATURES)
    for f in fields:
        assert required <= set(f.tags), f.name
        assert f.tags["sensitive_role"] in ("input-allowed", "evaluation-only", "prohibited")
    race = next(f for f in fields if f.name == "race")
    assert race.tags["sensitive_role"] == "evaluation-only"
    assert {s.name for s in store.list_feature_services()} == {t.name for t in fs.TASKS}


def test_derivation_uses_standard_units_and_event_time(fs_settings, fs_con):
    d = fs.derive(fs_con, persons=[1])
    df = d.rows.to_pandas()
    assert (df["person_id"] == 1).all() and df["event_timestamp"].is_monotonic_increasing
    # the raw Eunomia HbA1c values of person 1 in %, glucose in mg/dL
    raw = fs_con.execute(
        "SELECT measurement_datetime, value_as_number FROM omop.measurement WHERE person_id = 1 "
        "AND measurement_concept_id = 3004410 ORDER BY measurement_datetime DESC LIMIT 1"
    ).fetchall()
    if raw:
        at = pd.Timestamp(raw[0][0], tz="UTC")
        assert df.loc[df["event_timestamp"] == at, "hba1c_latest"].iloc[0] == pytest.approx(raw[0][1])
    assert df["sex"].isin(["M", "F", "U"]).all()
    assert d.edges.num_rows > 0 and d.edges.column("dst_id")[0].as_py().count("/") == 2


def test_point_in_time_training_set_excludes_late_data_and_reproduces(fs_settings, fs_con):
    index = datetime(2021, 1, 1, tzinfo=UTC)
    before = fs.training_set(fs_settings, _entities([(1, index), (2, index), (999, index)]))
    base = before.frame
    assert list(base["person_id"]) == [1, 2, 999]
    assert base.loc[2, ["age_years", "bmi_latest"]].isna().all()  # unknown person: no features, row kept

    # late data: a BMI recorded one day AFTER the index time, and one recorded before it but arriving late
    _late_measurement(fs_con, 1, datetime(2021, 1, 2, tzinfo=UTC), 3038553, 44.4, 9531)
    snap = _late_measurement(fs_con, 2, datetime(2020, 12, 31, tzinfo=UTC), 3038553, 33.3, 9531)
    after = fs.training_set(fs_settings, _entities([(1, index), (2, index), (999, index)]), snapshot_id=snap)
    assert after.snapshot_id == snap != before.snapshot_id
    assert after.frame.loc[0, "bmi_latest"] == base.loc[0, "bmi_latest"] != 44.4  # never a value after index time
    assert after.frame.loc[1, "bmi_latest"] == 33.3  # known at the new snapshot, event time before index

    again = fs.training_set(
        fs_settings, _entities([(1, index), (2, index), (999, index)]), snapshot_id=before.snapshot_id
    )
    pd.testing.assert_frame_equal(again.frame, base)
    assert again.content_hash == before.content_hash

    rows = fs_con.execute(
        "SELECT snapshot_id, content_hash FROM lineage.dataset_versions WHERE kind = 'training_set' AND version = ?",
        [before.training_set_id],
    ).fetchall()
    assert rows and rows[0][0] == before.snapshot_id
    edges = fs_con.execute(
        "SELECT count(*) FROM lineage.edges WHERE dst_id = ? AND src_kind = 'feature'", [before.training_set_id]
    ).fetchall()[0][0]
    assert edges > 0
    refs = fs_con.execute(
        "SELECT count(DISTINCT feature) FROM features.reference_distributions WHERE training_set_id = ?",
        [before.training_set_id],
    ).fetchall()[0][0]
    assert refs == len([c for c in base.columns if c in fs.FEATURES])


def test_governance_refuses_sensitive_inputs():
    fs.check_model_inputs("t2d-365", ["age_years", "vitals:bmi_latest"])
    with pytest.raises(fs.GovernanceError, match="race \\(evaluation-only\\)"):
        fs.check_model_inputs("t2d-365", ["age_years", "race"])
    with pytest.raises(fs.GovernanceError, match="person_source_value \\(prohibited"):
        fs.check_model_inputs("readmission-30", ["person_source_value"])
    with pytest.raises(fs.GovernanceError, match="unknown feature"):
        fs.check_model_inputs("t2d-365", ["no_such_feature"])
    for t in fs.TASKS:
        fs.check_model_inputs(t.name, t.features)


def test_stream_hook_pushes_touched_persons_online(fs_settings, fs_con):
    """As `careloop stream` runs it: in its own process (careloop.hook_process), the batch pickled to it."""
    import os
    from functools import partial

    from careloop.hook_process import HookProcess

    snap = _late_measurement(fs_con, 3, datetime(2026, 11, 1, 8, 0, tzinfo=UTC), 3038553, 27.7, 9531)
    with HookProcess(partial(fs.StreamFeatureHook, fs_settings), name="features") as hook:
        child = hook.pid
        stats = hook(
            SimpleNamespace(person_ids=[3], snapshot_id=snap, min_event_time=datetime(2026, 11, 1, tzinfo=UTC))
        )
    assert child not in (None, os.getpid()) and hook.pid is None
    assert stats["persons"] == 1 and stats["rows"] >= 1
    online = (
        fs.open_store(fs_settings)
        .get_online_features(features=["vitals:bmi_latest", "demographics:age_years"], entity_rows=[{"person_id": 3}])
        .to_dict()
    )
    assert online["bmi_latest"] == [27.7]


def test_bad_pushes_are_refused_whole_and_dead_lettered(fs_settings, fs_con):
    good = {"person_id": 1, "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC")}
    conds = {f.name: False for f in fs.VIEWS[4].features}
    assert fs.VIEWS[4].name == "conditions"
    frame = pd.DataFrame(
        [
            good | conds,
            {**good, "person_id": 987654} | conds,  # unknown entity
            {**good, "event_timestamp": None} | conds,  # missing timestamp
            good | conds | {"hx_hypertension": "yes"},  # wrong type
        ]
    )
    with pytest.raises(fs.FeaturePushError, match="refused 3 of 4") as err:
        fs.push_frame(fs_settings, "conditions", frame, con=fs_con)
    assert err.value.accepted == 1
    reasons = [
        r[0]
        for r in fs_con.execute(
            "SELECT reason FROM features.rejected WHERE view = 'conditions' ORDER BY reason"
        ).fetchall()
    ]
    assert any("unknown entity" in r for r in reasons)
    assert any("event_timestamp" in r for r in reasons)
    assert any("hx_hypertension" in r for r in reasons)
    with pytest.raises(fs.FeaturePushError, match="missing column"):
        fs.push_frame(fs_settings, "conditions", pd.DataFrame([good]), con=fs_con)


def test_backfill_cli_records_snapshot(fs_settings, fs_con):
    from typer.testing import CliRunner

    from careloop.cli import app

    before = fs.current_snapshot(fs_con)
    res = CliRunner().invoke(app, ["features", "backfill", "--start", "2020-01-01", "--partitions", "3"])
    assert res.exit_code == 0, res.output
    row = fs_con.execute(
        "SELECT snapshot_id, rows, partitions, scheduler FROM features.backfills "
        "WHERE start_time IS NOT NULL ORDER BY created_at DESC LIMIT 1"
    ).fetchall()[0]
    assert row[0] == before and row[1] > 0 and row[2] == 3 and row[3] == "threads"


def test_rejected_push_reaches_deadletter_topic(fs_settings, fs_con, broker):
    import uuid

    from careloop.kafka import EventConsumer
    from careloop.topics import ensure_topics

    settings = fs_settings.model_copy(update={"kafka_bootstrap": broker, "topic_prefix": f"t{uuid.uuid4().hex[:8]}."})
    ensure_topics(settings)
    bad = pd.DataFrame(
        [
            {"person_id": 424242, "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC")}
            | {f.name: False for f in fs.VIEWS[4].features}
        ]
    )
    with pytest.raises(fs.FeaturePushError, match="unknown entity"):
        fs.push_frame(settings, "conditions", bad, con=fs_con)
    with EventConsumer(settings, [settings.topic("deadletter")], group_id="t") as consumer:
        got = []
        for _ in range(20):
            got += consumer.poll(timeout_ms=500)
            if got:
                break
    assert len(got) == 1
    assert got[0].value["stage"] == "features" and "unknown entity" in got[0].value["reason"]


def test_windowed_features_decay_at_window_exit(fs_settings, fs_con):
    """A 7-day mean must not outlive its window: the grid has a row when the event leaves the window."""
    when = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    snap = _late_measurement(fs_con, 4, when, 3027018, 77.0, 8541)  # heart rate, /min
    df = fs.derive(fs_con, snapshot_id=snap, persons=[4], with_edges=False).rows.to_pandas()
    rows = df.set_index("event_timestamp")
    exit_at = pd.Timestamp(when + pd.Timedelta(days=7))
    assert rows.loc[pd.Timestamp(when), "heart_rate_latest"] == 77.0
    assert exit_at in rows.index  # a row at the window exit, though no event happened then

    def lake_mean(at: pd.Timestamp) -> float | None:
        return fs_con.execute(
            "SELECT avg(value_as_number) FROM omop.measurement WHERE person_id = 4 AND measurement_concept_id = "
            "3027018 AND measurement_datetime <= ? AND measurement_datetime > ? - INTERVAL 7 DAY",
            [at.tz_localize(None).to_pydatetime(), at.tz_localize(None).to_pydatetime()],
        ).fetchall()[0][0]

    for at in (pd.Timestamp(when), exit_at):
        expected, got = lake_mean(at), rows.loc[at, "heart_rate_mean_7d"]
        assert (pd.isna(got) and expected is None) or got == pytest.approx(expected)
    # the 30-day window still holds the event at the 7-day exit; no grid point lies after the snapshot's commit
    assert rows.loc[exit_at, "heart_rate_mean_30d"] == pytest.approx(
        fs_con.execute(
            "SELECT avg(value_as_number) FROM omop.measurement WHERE person_id = 4 AND measurement_concept_id = "
            "3027018 AND measurement_datetime <= ? AND measurement_datetime > ? - INTERVAL 30 DAY",
            [exit_at.tz_localize(None).to_pydatetime()] * 2,
        ).fetchall()[0][0]
    )
    from feature_store.derive import snapshot_time

    assert rows.index.max() <= pd.Timestamp(snapshot_time(fs_con, snap))


def test_stream_hook_retry_replaces_its_offline_part(fs_settings, fs_con):
    """The runner retries a failed hook with the same batch: the live offline store must not duplicate rows."""
    from feature_store.repo import live_paths

    snap = _late_measurement(fs_con, 5, datetime(2026, 11, 2, 9, 0, tzinfo=UTC), 3027018, 66.0, 8541)
    batch = SimpleNamespace(person_ids={5}, snapshot_id=snap, min_event_time=datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    folder = live_paths(fs_settings).part_dir("vitals")
    before = set(folder.glob("*.parquet"))
    hook = fs.StreamFeatureHook(fs_settings, lineage=False)
    try:
        hook(batch)
        once = set(folder.glob("*.parquet"))
        hook(batch)
        twice = set(folder.glob("*.parquet"))
    finally:
        hook.close()
    assert len(once - before) == 1 and twice == once
    offline = pd.read_parquet(next(iter(once - before)))
    assert (offline["person_id"] == 5).all() and 66.0 in set(offline["heart_rate_latest"])
    assert not list(folder.glob("*.tmp"))  # nothing half-written left behind


def _rows_equal(a, b) -> bool:
    """Arrow tables equal value by value (NaN == NaN; floats to 1e-9 relative: parallel aggregation order)."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for name in a.column_names:
        for x, y in zip(a.column(name).to_pylist(), b.column(name).to_pylist(), strict=True):
            if isinstance(x, float) and isinstance(y, float):
                if not (x == pytest.approx(y, rel=1e-9, nan_ok=True) or (x != x and y != y)):
                    return False
            elif x != y:
                return False
    return True


def test_bounded_history_derivation_equals_whole_history(fs_settings, fs_con):
    """The stream hook reads only the history that can still count from the batch's earliest event time on; the
    result must equal the whole-history derivation, also for a person whose latest point is older (re-derived)."""
    snap = _late_measurement(fs_con, 8, datetime(2026, 5, 2, 7, 30, tzinfo=UTC), 3027018, 71.0, 8541)
    for since in (datetime(2026, 5, 1, tzinfo=UTC), datetime(2019, 1, 1, tzinfo=UTC)):
        kw = dict(snapshot_id=snap, persons=[1, 8, 9], since=since, end=datetime(2027, 1, 1), include_latest=True)
        bounded, whole = fs.derive(fs_con, **kw), fs.derive(fs_con, bound_history=False, **kw)
        assert bounded.rows.num_rows > 0 and _rows_equal(bounded.rows, whole.rows)
        edges = [sorted(tuple(r.values()) for r in d.edges.to_pylist()) for d in (bounded, whole)]
        assert edges[0] == edges[1]
    # one pass, mixed bounds: person 8 (late event) reads recent history, person 9 (no event since) the whole
    import importlib

    probe = importlib.import_module("feature_store.derive")._without_events_since
    fs_con.execute("BEGIN")
    try:
        unbounded = probe(fs_con, snap, [1, 8, 9], datetime(2026, 5, 1), datetime(2027, 1, 1))
    finally:
        fs_con.execute("ROLLBACK")
    assert 9 in unbounded and 8 not in unbounded
    # a row that no feature uses (concept 0) is an event for the probe but not for the grid: still equal
    snap = _late_measurement(fs_con, 9, datetime(2026, 5, 3, 9, 0, tzinfo=UTC), 0, 5.0, 0)
    kw = dict(snapshot_id=snap, persons=[1, 8, 9], since=datetime(2026, 5, 1, tzinfo=UTC), end=datetime(2027, 1, 1),
              include_latest=True)  # fmt: skip
    bounded, whole = fs.derive(fs_con, **kw), fs.derive(fs_con, bound_history=False, **kw)
    assert _rows_equal(bounded.rows, whole.rows) and 9 in bounded.rows.column("person_id").to_pylist()
    # person 9 has no event after 2026-05-01: their latest point is kept (derived from the whole history)
    late = fs.derive(fs_con, snapshot_id=snap, persons=[9], since=datetime(2026, 5, 1, tzinfo=UTC), include_latest=True)
    assert late.rows.num_rows == 1


def test_vocabulary_cache_follows_vocabulary_versions(fs_settings, fs_con):
    """Concept-set expansions and concept names are cached on the connection per vocabulary version: a new
    CONCEPT_ANCESTOR row or payer concept changes the features from its snapshot on, and not before it."""
    when = datetime(2026, 3, 1, 9, 0)

    def body(c):
        c.execute(
            "INSERT INTO omop.condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
            "condition_start_date, condition_start_datetime, condition_type_concept_id) "
            "VALUES (990000001, 6, 999000001, ?, ?, 32817)",
            [when.date(), when],
        )
        c.execute(
            "INSERT INTO omop.payer_plan_period (payer_plan_period_id, person_id, payer_plan_period_start_date, "
            "payer_plan_period_end_date, payer_concept_id) VALUES (990000001, 6, DATE '2026-01-01', "
            "DATE '2026-12-31', 999000002)"
        )

    transaction(fs_con, body)
    before = fs.current_snapshot(fs_con)

    def vocab(c):
        c.execute(
            "INSERT INTO omop.concept_ancestor (ancestor_concept_id, descendant_concept_id, "
            "min_levels_of_separation, max_levels_of_separation) VALUES (37018196, 999000001, 1, 1)"
        )
        c.execute(
            "INSERT INTO omop.concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, "
            "concept_code, valid_start_date, valid_end_date) VALUES (999000002, 'Test payer', 'Payer', 'SOPT', "
            "'SOPT', 'x', DATE '2000-01-01', DATE '2099-12-31')"
        )

    transaction(fs_con, vocab)
    after = fs.current_snapshot(fs_con)

    def at(snap: int) -> dict:
        rows = fs.derive(fs_con, snapshot_id=snap, persons=[6], since=when, include_latest=True, with_edges=False)
        return rows.rows.to_pylist()[0]

    old, new, old_again = at(before), at(after), at(before)
    assert old["hx_prediabetes"] is False and old["payer_type"] == "999000002"
    assert new["hx_prediabetes"] is True and new["payer_type"] == "Test payer"
    assert old_again == old  # an older snapshot is derived against its own vocabulary
    from feature_store.vocab import _changes_vocab

    ids = {"7"}  # compaction rewrites a vocabulary table's files, not its content: no new vocabulary version
    assert not _changes_vocab({"merge_adjacent": ["7"]}, ids) and _changes_vocab({"tables_inserted_into": [7]}, ids)


def test_online_batch_write_matches_feast_and_fast_path_refuses_unknown(fs_settings, fs_con):
    """The prepared batch writes exactly the SQLite rows Feast's own online write produces (and builds the rows
    Feast's converter builds, used for other stores); an Arrow push with an unknown person is refused by row."""
    import sqlite3

    import pyarrow as pa
    from feast import ValueType
    from feast.utils import _convert_arrow_to_proto

    from feature_store.online import latest_per_person, prepare_rows, write_tables
    from feature_store.push import push_frames, to_push_table
    from feature_store.repo import feature_views, live_paths

    rows = fs.derive(fs_con, persons=[7], since=datetime(2015, 1, 1, tzinfo=UTC), include_latest=True).rows
    views = fs.split_views(rows)
    store = fs.open_store(fs_settings)
    fvs = feature_views(store)
    db = sqlite3.connect(live_paths(fs_settings).root / "online.db")

    def online_rows(view: str) -> list[tuple]:
        return db.execute(
            f"SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM careloop_{view} "
            "ORDER BY entity_key, feature_name"
        ).fetchall()

    for view in ("vitals", "demographics", "conditions", "imaging"):
        table = latest_per_person(to_push_table(view, views[view]))
        assert table.num_rows == 1
        feast_rows = _convert_arrow_to_proto(table, fvs[view], {"person_id": ValueType.INT64})
        assert prepare_rows(view, table) == feast_rows
        db.execute(f"DELETE FROM careloop_{view}")
        db.commit()
        store.provider.online_write_batch(store.config, fvs[view], feast_rows, progress=None)
        by_feast = online_rows(view)
        db.execute(f"DELETE FROM careloop_{view}")
        db.commit()
        write_tables(store, fvs, {view: table})
        assert online_rows(view) == by_feast and len(by_feast) == len(fvs[view].features)

    bad = views["conditions"].slice(0, 1)
    bad = bad.set_column(0, "person_id", pa.array([987655], pa.int64()))
    with pytest.raises(fs.FeaturePushError, match="refused 1 of 1"):
        push_frames(fs_settings, {"conditions": bad}, con=fs_con, source="test")


def test_online_rewrite_writes_only_changed_values_and_trusts_nothing_another_writer_touched(fs_settings, fs_con):
    """A person this connection wrote last gets only their changed features rewritten and the rest re-stamped; the
    rows are exactly what Feast's full write gives. A write by another connection makes it write everything again."""
    import sqlite3
    from datetime import timedelta

    import pyarrow as pa
    import pyarrow.compute as pc

    from feature_store.definitions import VIEW_BY_NAME
    from feature_store.online import latest_per_person, prepare_rows, write_tables
    from feature_store.push import to_push_table
    from feature_store.repo import feature_views, live_paths

    rows = fs.derive(fs_con, persons=[7], since=datetime(2015, 1, 1, tzinfo=UTC), include_latest=True).rows
    first = latest_per_person(to_push_table("vitals", fs.split_views(rows)["vitals"]))
    changed, kept, zeroed = [f.name for f in VIEW_BY_NAME["vitals"].features if f.dtype == "float"][:3]

    def replaced(table, name, value):
        return table.set_column(table.column_names.index(name), name, pa.array([value], table.schema.field(name).type))

    first = replaced(replaced(first, changed, 70.0), kept, 42.5)
    later = pc.add(first.column("event_timestamp"), pa.scalar(timedelta(days=1)))
    second = replaced(first, "event_timestamp", later[0].as_py())
    second = replaced(replaced(second, changed, 71.0), zeroed, 0.0)
    third = replaced(second, zeroed, -0.0)  # equal to 0.0, but not the same stored bytes
    store = fs.open_store(fs_settings)
    fvs = feature_views(store)
    db = sqlite3.connect(live_paths(fs_settings).root / "online.db")
    conn = store.provider.online_store._get_conn(store.config)
    sql: list[str] = []
    conn.set_trace_callback(sql.append)

    def online_rows() -> list[tuple]:
        return db.execute(
            "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM careloop_vitals "
            "ORDER BY entity_key, feature_name"
        ).fetchall()

    def by_feast(table) -> list[tuple]:
        db.execute("DELETE FROM careloop_vitals")
        db.commit()
        store.provider.online_write_batch(store.config, fvs["vitals"], prepare_rows("vitals", table), progress=None)
        return online_rows()

    try:
        for table in (second, third):
            by_feast(first)  # another connection wrote: the next write is a whole one
            sql.clear()
            write_tables(store, fvs, {"vitals": first})
            assert f"'{kept}'" in " ".join(sql)
            sql.clear()
            write_tables(store, fvs, {"vitals": table})  # this connection wrote last: only the changes
            upserts = " ".join(q for q in sql if q.startswith("INSERT"))
            assert f"'{changed}'" in upserts and f"'{zeroed}'" in upserts and f"'{kept}'" not in upserts
            assert any(q.startswith("UPDATE") for q in sql)
            assert online_rows() == by_feast(table)
        write_tables(store, fvs, {"vitals": second})
        write_tables(store, fvs, {"vitals": third})  # 0.0 -> -0.0 only
        assert db.execute(f"SELECT value_text FROM careloop_vitals WHERE feature_name = '{zeroed}'").fetchall() == [
            ("-0.0",)
        ]
        db.execute(f"UPDATE careloop_vitals SET value = X'', value_text = NULL WHERE feature_name = '{kept}'")
        db.commit()
        write_tables(store, fvs, {"vitals": third})  # same values, but another writer changed one: rewritten
        assert online_rows() == by_feast(third)
        write_tables(store, fvs, {"vitals": third})
        ddl = db.execute("SELECT sql FROM sqlite_master WHERE name = 'careloop_vitals'").fetchone()[0]
        conn.execute("DROP TABLE careloop_vitals")  # re-created empty through the writer's own connection
        conn.execute(ddl)
        write_tables(store, fvs, {"vitals": third})
        assert online_rows() == by_feast(third)
    finally:
        conn.set_trace_callback(None)
        db.close()


def test_stream_hook_fails_whole_when_online_store_is_unavailable_then_retry_succeeds(fs_settings, fs_con):
    """An unavailable online store (locked by another writer) fails the hook before any offline part is written,
    so the runner retries without committing offsets; the retry writes both stores."""
    import sqlite3

    from feature_store.repo import live_paths

    when = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
    snap = _late_measurement(fs_con, 10, when, 3027018, 88.0, 8541)
    batch = SimpleNamespace(person_ids={10}, snapshot_id=snap, min_event_time=when)
    folder = live_paths(fs_settings).part_dir("vitals")
    before = set(folder.glob("*.parquet"))
    hook = fs.StreamFeatureHook(fs_settings)
    blocker = sqlite3.connect(live_paths(fs_settings).root / "online.db", timeout=1)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(fs.FeatureStoreError, match="online write"):
            hook(batch)
        assert set(folder.glob("*.parquet")) == before  # nothing offline: the batch is not half-pushed
        blocker.rollback()
        assert hook(batch)["rows"] >= 1
    finally:
        blocker.close()
        hook.close()
    got = fs.open_store(fs_settings).get_online_features(
        features=["vitals:heart_rate_latest"], entity_rows=[{"person_id": 10}]
    )
    assert got.to_dict()["heart_rate_latest"] == [88.0]
    assert len(set(folder.glob("*.parquet")) - before) == 1


def test_offline_compaction_merges_one_view_per_push_and_keeps_every_row(tmp_path):
    """Each push adds a part per view; compaction merges at most one view per push (no stall where every view is
    merged at once), keeps the part count bounded, never rewrites big parts, and loses no row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feature_store.push import COMPACT_AT, SMALL_PART, compact_most_fragmented
    from feature_store.repo import RepoPaths

    paths = RepoPaths(tmp_path, parts=True)
    views = ["a", "b", "c"]
    for v in views:
        paths.part_dir(v).mkdir(parents=True)
    big = paths.part_dir("a") / "0-big.parquet"  # a part over SMALL_PART (incompressible) stays as it is
    pq.write_table(pa.table({"x": pa.array(range(1, SMALL_PART // 4), pa.int64())}), big, compression="none")
    big_rows = pq.read_metadata(big).num_rows
    merged_per_push = []
    for i in range(3 * COMPACT_AT):
        for v in views:
            pq.write_table(pa.table({"x": [-(i * 10 + len(v))]}), paths.part_dir(v) / f"{i:05d}.parquet")
        merged_per_push.append(compact_most_fragmented(paths, views))
        counts = [len(list(paths.part_dir(v).glob("*.parquet"))) for v in views]
        assert max(counts) <= COMPACT_AT + len(views) + 1
    assert all(n == 0 or n > COMPACT_AT for n in merged_per_push) and sum(map(bool, merged_per_push)) >= len(views)
    assert big.exists() and pq.read_metadata(big).num_rows == big_rows
    for v in views:
        rows = pa.concat_tables([pq.read_table(p) for p in paths.part_dir(v).glob("*.parquet")]).column("x")
        small = sorted(x for x in rows.to_pylist() if x < 0)
        assert small == sorted(-(i * 10 + len(v)) for i in range(3 * COMPACT_AT))  # each once: none lost or doubled
    assert not list(tmp_path.rglob("*.tmp"))


def test_measurement_features_equal_a_direct_computation_from_raw_rows(fs_settings, fs_con):
    """Every measurement feature of several persons, at every as-of point, against pandas over the raw lake rows
    (unit rules and plausible ranges applied by hand): the per-measure statistics are pivoted outside SQL, so a
    value landing on the wrong person, time or feature would show here."""
    from feature_store.concepts import LABS, VITALS

    persons = [1, 2, 3, 4, 5, 6]
    got = fs.derive(fs_con, persons=persons, with_edges=False).rows.to_pandas()
    raw = fs_con.execute(
        "SELECT person_id, measurement_id, coalesce(measurement_datetime, CAST(measurement_date AS TIMESTAMP)) "
        "AS ts, measurement_concept_id AS concept, unit_concept_id AS unit, unit_source_value AS unit_source, "
        "value_as_number AS value FROM omop.measurement WHERE person_id IN (SELECT unnest(?::BIGINT[])) "
        "AND value_as_number IS NOT NULL",
        [persons],
    ).df()
    raw["ts"] = pd.to_datetime(raw["ts"]).dt.tz_localize("UTC")
    checked = 0
    for m in (*VITALS, *LABS):
        parts = []
        for u in m.units:
            no_unit = raw["unit"].fillna(0) == 0
            unit = (raw["unit"] == u.unit_concept_id) | (no_unit & (raw["unit_source"] == u.unit_source))
            rows = raw[raw["concept"].isin(m.concepts) & unit]
            parts.append(rows.assign(value=rows["value"] * u.factor + u.offset))
        mine = pd.concat(parts)
        mine = mine[mine["value"].between(*m.plausible)]
        for row in got.itertuples():
            at = row.event_timestamp
            of = mine[(mine["person_id"] == row.person_id) & (mine["ts"] <= at)]
            year = of[of["ts"] > at - pd.Timedelta(days=365)].sort_values(["ts", "measurement_id"])
            latest = getattr(row, f"{m.key}_latest")
            assert (pd.isna(latest) and year.empty) or latest == pytest.approx(year["value"].iloc[-1]), (m.key, row)
            if m in LABS:
                assert getattr(row, f"{m.key}_count_365d") == len(year)
                continue
            for w in (7, 30):
                window = year[year["ts"] > at - pd.Timedelta(days=w)]["value"]
                for stat, expected in (("mean", window.mean()), ("min", window.min()), ("max", window.max())):
                    value = getattr(row, f"{m.key}_{stat}_{w}d")
                    assert (pd.isna(value) and window.empty) or value == pytest.approx(expected), (m.key, stat, w)
            checked += len(year) > 0
    assert checked > 0 and got["person_id"].nunique() > 1


def test_a_table_never_written_is_skipped_until_its_first_write(fs_settings, fs_con):
    """Imaging and payer tables are often empty for a whole lake; the derivation then skips reading them (the
    snapshot log says so), and reads them from the snapshot of their first write on, not before."""
    from feature_store import vocab

    def derive_at(snap: int) -> dict:
        rows = fs.derive(fs_con, snapshot_id=snap, persons=[3], since=when, include_latest=True, with_edges=False)
        return rows.rows.to_pylist()[-1]

    when = datetime(2026, 5, 1, 9, 0)
    before = fs.current_snapshot(fs_con)
    assert derive_at(before)["imaging_studies_365d"] == 0
    assert vocab.never_written(fs_con, "image_occurrence", before)

    def body(c):
        c.execute(
            "INSERT INTO omop.image_occurrence (image_occurrence_id, person_id, image_occurrence_date, "
            "image_occurrence_datetime, image_study_uid, modality_source_value, manufacturer, "
            "manufacturer_model_name) VALUES (990000001, 3, ?, ?, '1.2.3', 'CT', 'Acme', 'Scan 9')",
            [when.date(), when],
        )

    transaction(fs_con, body)
    after = fs.current_snapshot(fs_con)
    new = derive_at(after)
    assert (new["imaging_studies_365d"], new["last_modality"], new["last_scanner_model"]) == (1, "CT", "Scan 9")
    assert not vocab.never_written(fs_con, "image_occurrence", after)
    assert vocab.never_written(fs_con, "image_occurrence", before) and derive_at(before)["imaging_studies_365d"] == 0
