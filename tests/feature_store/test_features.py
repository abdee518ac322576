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
    snap = _late_measurement(fs_con, 3, datetime(2026, 11, 1, 8, 0, tzinfo=UTC), 3038553, 27.7, 9531)
    hook = fs.StreamFeatureHook(fs_settings)
    try:
        stats = hook(
            SimpleNamespace(person_ids=[3], snapshot_id=snap, min_event_time=datetime(2026, 11, 1, tzinfo=UTC))
        )
    finally:
        hook.close()
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
