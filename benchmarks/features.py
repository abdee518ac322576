"""Feature-store benchmark: streaming freshness, online retrieval latency, point-in-time retrieval vs merge_asof.

Run: .venv/bin/python benchmarks/features.py [--full]   (writes benchmarks/results/features.json)

What is measured (the lake is pre-filled with `--clones` copies of the Eunomia persons: 560 persons, 200k
measurements by default, and grows during the run)
- hook: `StreamFeatureHook` alone (derive at the batch's snapshot + validated online/offline push + feature lineage)
  on batches of exactly 200 and 1,000 heart-rate events of random persons, p50/p99 and per phase; on the same
  batches, baselines of the pre-change path measured in the same run: the whole-history derivation
  (`bound_history=False`) and Feast's generic online write (`provider.ingest_df` per view) vs ours (`write_tables`).
- freshness: events are scheduled at a fixed rate (200/s, 1000/s); each event is a heart-rate measurement of an
  Eunomia person with event time = its scheduled publish time. Every 0.25 s the due events are written to the lake
  in one transaction (standing in for the transforms writer, with its compaction turn), then `StreamFeatureHook`
  recomputes and pushes the touched persons' features, then the online store is read back. Freshness of an event
  = the wall time when the online read returned the updated vector minus the event's scheduled publish time (so
  queueing behind a slow batch counts). It does not include Kafka or Beam time (measured by the transforms
  benchmarks). One loop does all of it in turn: unlike the stream runner, the next lake commit does not run
  while the hook runs.
- online p99: `get_online_features` of a 40-feature vector for one person (SQLite online store).
- point-in-time: Feast `get_historical_features` (DuckDB offline store) for N entity rows over synthetic feature
  rows vs a pandas `merge_asof` (backward, by person, same TTL) on the same data in the same run; values compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from careloop.duck import connect, transaction  # noqa: E402
from careloop.settings import load_settings  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


CLONED = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "measurement",
    "payer_plan_period",
)
ID_COLUMNS = {
    "observation_period": "observation_period_id",
    "visit_occurrence": "visit_occurrence_id",
    "condition_occurrence": "condition_occurrence_id",
    "drug_exposure": "drug_exposure_id",
    "measurement": "measurement_id",
    "payer_plan_period": "payer_plan_period_id",
}
PERSON_STRIDE = 1_000  # clone k of Eunomia person p is person p + k * PERSON_STRIDE
ROW_STRIDE = 10_000_000


def prefill(con, clones: int) -> dict:
    """A lake of realistic size: `clones` copies of every Eunomia person with their whole clinical history
    (new person and row ids), in one transaction. The Eunomia sample alone (28 persons, 10k measurements) would
    hide any cost that grows with the lake rather than with the touched persons."""

    def body(c) -> None:
        for table in CLONED:
            replace = [f"person_id + r.k * {PERSON_STRIDE} AS person_id"]
            if table in ID_COLUMNS:
                replace.append(f"{ID_COLUMNS[table]} + r.k * {ROW_STRIDE} AS {ID_COLUMNS[table]}")
            if table == "person":
                replace.append("person_source_value || '-' || r.k AS person_source_value")
            c.execute(
                f"INSERT INTO omop.{table} SELECT t.* REPLACE ({', '.join(replace)}) FROM omop.{table} t, "
                f"range(1, {clones + 1}) r(k) WHERE t.person_id < {PERSON_STRIDE}"
            )

    if clones:
        transaction(con, body)
    return {t: con.execute(f"SELECT count(*) FROM omop.{t}").fetchall()[0][0] for t in CLONED}


# The stream runner merges one table's small files after every commit, round robin over the ~15 tables it writes;
# the stand-in writer does the same for the one table it writes at that cadence. Without it the measurement table
# gathered 100+ small files over a --full run, which the real pipeline never has, and slowed every later scan.
COMPACT_EVERY = 15
_commits = [0]


def insert_heart_rates(con, rows: list[tuple]) -> None:
    """One lake transaction of heart-rate measurements (measurement_id, person_id, naive UTC ts, value), standing
    in for the stream writer's commit (and its compaction turn, see COMPACT_EVERY)."""
    from transforms.stream import compact_table

    frame = pd.DataFrame(rows, columns=["measurement_id", "person_id", "ts", "value"])

    def body(c) -> None:
        c.register("_bench_rows", frame)
        c.execute(
            "INSERT INTO omop.measurement (measurement_id, person_id, measurement_concept_id, "
            "measurement_date, measurement_datetime, measurement_type_concept_id, value_as_number, "
            "unit_concept_id) SELECT measurement_id, person_id, 3027018, CAST(ts AS DATE), ts, 32817, "
            "value, 8541 FROM _bench_rows"
        )

    transaction(con, body)
    _commits[0] += 1
    if _commits[0] % COMPACT_EVERY == 0:
        compact_table(con, "omop", "measurement")


def hook_batches(settings, con, hook, size: int, reps: int) -> dict:
    """The hook alone on batches of exactly `size` events (random persons of the whole lake), with per-phase
    wall and CPU time; and, on the same batches, the baseline of the pre-change path for its two big parts:
    the whole-history derivation and Feast's generic online write (`provider.ingest_df` per view)."""
    import feature_store as fs
    from feature_store.derive import split_views
    from feature_store.online import latest_per_person, write_tables
    from feature_store.push import to_push_table
    from feature_store.repo import feature_views

    persons = [r[0] for r in con.execute("SELECT person_id FROM omop.person").fetchall()]
    next_id = con.execute("SELECT coalesce(max(measurement_id), 0) + 1 FROM omop.measurement").fetchall()[0][0]
    rng = np.random.default_rng(size)
    lineage = hook.lineage
    store = fs.open_store(settings)
    views = feature_views(store)
    stats, base_derive, base_online, new_online, batches = [], [], [], [], []
    for _ in range(reps + 1):  # the first batch warms the connection and caches; not counted
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [
            (
                next_id + i,
                int(rng.choice(persons)),
                now - timedelta(milliseconds=int(rng.integers(0, 1000))),
                float(rng.integers(50, 120)),
            )
            for i in range(size)
        ]
        next_id += size
        insert_heart_rates(con, rows)
        snap = fs.current_snapshot(con)
        batch = SimpleNamespace(
            person_ids={r[1] for r in rows}, snapshot_id=snap, min_event_time=min(r[2] for r in rows)
        )
        stats.append(hook(batch))
        batches.append((batch, now))
    # the baselines run after all hook batches, so their writes cannot slow the hook's (SQLite WAL checkpoints)
    for batch, now in batches:
        t = time.perf_counter()
        whole = fs.derive(
            hook.con,
            snapshot_id=batch.snapshot_id,
            persons=sorted(batch.person_ids),
            since=batch.min_event_time,
            end=now + timedelta(days=1),
            include_latest=True,
            with_edges=lineage,
            bound_history=False,
        )
        base_derive.append(time.perf_counter() - t)
        tables = {v: latest_per_person(to_push_table(v, t)) for v, t in split_views(whole.rows).items()}
        t = time.perf_counter()
        write_tables(store, views, tables)  # rewrites the values the hook wrote
        new_online.append(time.perf_counter() - t)
        t = time.perf_counter()
        for v, table in tables.items():
            store.provider.ingest_df(views[v], table.to_pandas())
        base_online.append(time.perf_counter() - t)
    stats, base_derive, base_online, new_online = stats[1:], base_derive[1:], base_online[1:], new_online[1:]

    def col(k: str) -> list[float]:
        return [x[k] for x in stats]

    return {
        "batch_events": size,
        "batches": reps,
        "lineage": lineage,
        "persons_mean": float(np.mean(col("persons"))),
        "hook_p50_s": pct(col("total_s"), 50),
        "hook_p99_s": pct(col("total_s"), 99),
        "hook_cpu_p50_s": pct(col("cpu_s"), 50),
        "derive_p50_s": pct(col("derive_s"), 50),
        "push_p50_s": pct(col("push_s"), 50),
        "lineage_p50_s": pct(col("lineage_s"), 50),
        "online_write_p50_s": pct(new_online, 50),
        "baseline_whole_history_derive_p50_s": pct(base_derive, 50),
        "baseline_feast_ingest_df_p50_s": pct(base_online, 50),
        "load_avg_1m": os.getloadavg()[0],
    }


def freshness(settings, con, hook, rate: int, seconds: float) -> dict:
    import feature_store as fs

    persons = [r[0] for r in con.execute("SELECT person_id FROM omop.person ORDER BY 1").fetchall()]
    next_id = con.execute("SELECT coalesce(max(measurement_id), 0) + 1 FROM omop.measurement").fetchall()[0][0]
    store = fs.open_store(settings)
    rng = np.random.default_rng(rate)
    n = int(rate * seconds)
    t0 = time.time() + 0.2
    sched = t0 + np.arange(n) / rate
    done, lat, batches, stats = 0, [], 0, []
    while done < n:
        now = time.time()
        due = int(np.searchsorted(sched, now, side="right"))
        if due <= done:
            time.sleep(min(0.25, sched[done] - now + 0.001))
            continue
        idx = range(done, due)
        rows = [
            (
                next_id + i,
                int(rng.choice(persons)),
                datetime.fromtimestamp(sched[i], UTC).replace(tzinfo=None),
                float(rng.integers(50, 120)),
            )
            for i in idx
        ]
        next_id += len(rows)
        frame = pd.DataFrame(rows, columns=["measurement_id", "person_id", "ts", "value"])
        insert_heart_rates(con, rows)
        snap = fs.current_snapshot(con)
        touched = sorted(set(frame["person_id"]))
        stats.append(hook(SimpleNamespace(person_ids=touched, snapshot_id=snap, min_event_time=frame["ts"].min())))
        got = store.get_online_features(
            features=["vitals:heart_rate_latest"], entity_rows=[{"person_id": int(p)} for p in touched]
        ).to_dict()
        t_online = time.time()
        last = frame.sort_values(["person_id", "ts", "measurement_id"]).groupby("person_id")["value"].last()
        assert [float(v) for v in got["heart_rate_latest"]] == [float(last[p]) for p in touched], "stale online value"
        lat += [t_online - s for s in sched[done:due]]
        done, batches = due, batches + 1
    return {
        "events_per_s": rate,
        "events": n,
        "batches": batches,
        "p50_s": pct(lat, 50),
        "p99_s": pct(lat, 99),
        "max_s": max(lat),
        "batch_events_mean": n / batches,
        "batch_persons_mean": float(np.mean([x["persons"] for x in stats])),
        "hook_p50_s": pct([x["total_s"] for x in stats], 50),
        "hook_p99_s": pct([x["total_s"] for x in stats], 99),
        "hook_max_s": max(x["total_s"] for x in stats),
        "hook_derive_s_mean": float(np.mean([x["derive_s"] for x in stats])),
        "hook_push_s_mean": float(np.mean([x["push_s"] for x in stats])),
        "hook_lineage_s_mean": float(np.mean([x["lineage_s"] for x in stats])),
        "hook_total_s_mean": float(np.mean([x["total_s"] for x in stats])),
        "hook_cpu_s_mean": float(np.mean([x["cpu_s"] for x in stats])),
        "load_avg_1m": os.getloadavg()[0],
    }


def online_latency(settings, reads: int) -> dict:
    import feature_store as fs

    store = fs.open_store(settings)
    vitals = [f.name for f in fs.VIEWS[1].features][:40]
    refs = [f"vitals:{n}" for n in vitals]
    lat = []
    for i in range(reads):
        t = time.perf_counter()
        store.get_online_features(features=refs, entity_rows=[{"person_id": 1 + i % 28}]).to_dict()
        lat.append((time.perf_counter() - t) * 1000)
    return {"features": len(refs), "reads": reads, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def pit(settings, entity_rows: int, persons: int, rows_per_person: int) -> dict:
    import pyarrow.parquet as pq

    import feature_store as fs
    from feature_store.repo import open_store, snapshot_paths, view_schema
    from feature_store.training import _ROW

    fake_snapshot = 10**9  # a synthetic offline store, separate from the lake's snapshots
    paths = snapshot_paths(settings, fake_snapshot)
    spec = next(v for v in fs.VIEWS if v.name == "vitals")
    rng = np.random.default_rng(7)
    start = datetime(2015, 1, 1, tzinfo=UTC)
    n = persons * rows_per_person
    feats = pd.DataFrame(
        {
            "person_id": np.repeat(np.arange(1, persons + 1), rows_per_person).astype("int64"),
            "event_timestamp": pd.to_datetime(start) + pd.to_timedelta(rng.integers(0, 8 * 365 * 86400, n), unit="s"),
        }
    )
    feats["created"] = pd.Timestamp(datetime.now(UTC))
    for f in spec.features:
        feats[f.name] = rng.normal(100, 15, n).round(3)
    feats = feats.drop_duplicates(["person_id", "event_timestamp"])
    paths.offline.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pandas(feats, schema=view_schema(spec), preserve_index=False), paths.parquet("vitals"))
    store = open_store(settings, fake_snapshot)
    ent = pd.DataFrame(
        {
            "person_id": rng.integers(1, persons + 1, entity_rows).astype("int64"),
            "event_timestamp": pd.to_datetime(start)
            + pd.to_timedelta(rng.integers(0, 9 * 365 * 86400, entity_rows), unit="s"),
        }
    )
    ent["event_timestamp"] = ent["event_timestamp"].astype("datetime64[us, UTC]")
    ent[_ROW] = np.arange(entity_rows)
    names = [f.name for f in spec.features][:10]
    t = time.perf_counter()
    got = store.get_historical_features(entity_df=ent, features=[f"vitals:{n}" for n in names]).to_df()
    feast_s = time.perf_counter() - t
    got = got.sort_values(_ROW).reset_index(drop=True)

    t = time.perf_counter()
    left = ent.sort_values("event_timestamp")
    right = feats.sort_values("event_timestamp")[["person_id", "event_timestamp", *names]]
    right["event_timestamp"] = right["event_timestamp"].astype("datetime64[us, UTC]")
    base = pd.merge_asof(
        left,
        right,
        on="event_timestamp",
        by="person_id",
        direction="backward",
        tolerance=pd.Timedelta(days=spec.ttl_days),
    )
    pandas_s = time.perf_counter() - t
    base = base.sort_values(_ROW).reset_index(drop=True)
    a, b = got[names].to_numpy(dtype=float), base[names].to_numpy(dtype=float)
    same = bool(np.array_equal(np.isnan(a), np.isnan(b)) and np.allclose(np.nan_to_num(a), np.nan_to_num(b)))
    mismatched_rows = int((~((a == b) | (np.isnan(a) & np.isnan(b)))).any(axis=1).sum())
    return {
        "entity_rows": entity_rows,
        "feature_rows": len(feats),
        "features": len(names),
        "feast_s": feast_s,
        "pandas_merge_asof_s": pandas_s,
        "ratio_feast_over_pandas": feast_s / pandas_s,
        "identical_values": same,
        "mismatched_rows": mismatched_rows,
        "null_rows": int(np.isnan(a).all(axis=1).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="longer freshness runs (30 s per rate)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--clones", type=int, default=19, help="copies of the Eunomia persons pre-filled into the lake")
    ap.add_argument("--reps", type=int, default=None, help="hook batches per size (default 8, --full 30)")
    ap.add_argument("--no-lineage", action="store_true", help="run the hook without feature lineage edges")
    args = ap.parse_args()
    seconds = args.seconds or (30.0 if args.full else 4.0)
    home = Path(tempfile.mkdtemp(prefix="careloop-bench-features-"))
    os.environ["CARELOOP_HOME"] = str(home)
    settings = load_settings()
    import feature_store as fs

    con = connect(settings)
    t = time.perf_counter()
    fs.load_omop_csv(con, REPO.parent / "shared" / "data" / "omop" / "eunomia_synthea27nj")
    lake_rows = prefill(con, args.clones)
    fs.apply(settings)
    setup_s = time.perf_counter() - t
    lineage = not args.no_lineage
    reps = args.reps or (30 if args.full else 8)
    # one long-lived hook, as in the stream runner; warmed on every person (its first call opens the lake
    # connection, Feast and the vocabulary cache: a one-time cost that is not part of a batch's latency)
    hook = fs.StreamFeatureHook(settings, lineage=lineage)
    hook(
        SimpleNamespace(
            person_ids=[r[0] for r in con.execute("SELECT person_id FROM omop.person").fetchall()],
            snapshot_id=fs.current_snapshot(con),
            min_event_time=datetime.now(UTC) - timedelta(days=1),
        )
    )
    results = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0]},
        "setup_s": setup_s,
        "lake_rows": lake_rows,
        "hook": [hook_batches(settings, con, hook, size, reps) for size in (200, 1000)],
        "freshness": [freshness(settings, con, hook, rate, seconds) for rate in (200, 1000)],
        "online": online_latency(settings, 500),
        "hook_lineage": lineage,
        "point_in_time": pit(settings, 100_000, 20_000, 10),
        "notes": "freshness = online value updated (read back) minus scheduled event publish time, through "
        "lake commit + StreamFeatureHook (derive at snapshot + validated push); Kafka/Beam time excluded",
    }
    hook.close()
    out = REPO / "benchmarks" / "results" / "features.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
