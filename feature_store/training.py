"""Point-in-time training sets through Feast's DuckDB offline store, reproducible from a lake snapshot id.

A training set is built from the offline store of one lake snapshot (derived by the backfill, once per
snapshot): Feast's `get_historical_features` joins, for every (person, index time) row, the latest feature row
with an event time at or before the index time (within the view's TTL), so a value recorded after the index time
never appears. Building it again with the recorded snapshot id reads the same lake state and gives the same rows
and values. Each training set is recorded in `features.training_sets`, in lineage (dataset version + edges
`feature view/person/time -> training set`) and with a reference distribution per feature for monitoring.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from careloop.events import utcnow
from careloop.settings import Settings
from feature_store.definitions import DEFAULT_TASK, FEATURES, VIEWS, task
from feature_store.errors import FeatureStoreError
from feature_store.repo import JOIN_KEY, TS, snapshot_paths

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_ROW = "__careloop_row"


@dataclass
class TrainingSet:
    training_set_id: str
    service: str
    snapshot_id: int
    frame: pd.DataFrame
    content_hash: str
    uri: str | None = None


def _entity_frame(entity_df: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    missing = [c for c in (JOIN_KEY, TS) if c not in entity_df.columns]
    if missing:
        raise FeatureStoreError(f"entity rows need columns {JOIN_KEY} and {TS} (index time); missing {missing}")
    df = entity_df[[JOIN_KEY, TS]].copy()
    pid = pd.to_numeric(df[JOIN_KEY], errors="coerce")
    ts = pd.to_datetime(df[TS], errors="coerce", utc=True)
    bad = pid.isna() | ts.isna()
    if bad.any():
        raise FeatureStoreError(
            f"{int(bad.sum())} entity row(s) have no integer person_id or no index time "
            f"(first at row {int(bad.idxmax())})"
        )
    df[JOIN_KEY] = pid.astype("int64")
    df[TS] = ts.astype("datetime64[us, UTC]")
    df[_ROW] = range(len(df))
    return df.reset_index(drop=True)


def content_hash(frame: pd.DataFrame) -> str:
    import pandas as pd

    digest = hashlib.sha256()
    digest.update(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame.astype(str), index=False).values.tobytes())
    return "sha256:" + digest.hexdigest()


def ensure_snapshot(settings: Settings, snapshot_id: int, con: duckdb.DuckDBPyConnection) -> None:
    from feature_store.backfill import backfill, snapshot_ready

    marker = snapshot_ready(settings, snapshot_id)
    if marker is None or marker.get("start") or marker.get("end"):
        backfill(settings, snapshot_id=snapshot_id, con=con)


def historical_features(settings: Settings, entity: pd.DataFrame, service: str, snapshot_id: int) -> pd.DataFrame:
    """Feast `get_historical_features` for `service` on the snapshot's DuckDB offline store, in entity order."""
    from feature_store.repo import open_store

    store = open_store(settings, snapshot_id)
    try:
        fs = store.get_feature_service(service)
        job = store.get_historical_features(entity_df=entity, features=fs)
        out = job.to_df()
    except Exception as err:
        raise FeatureStoreError(f"point-in-time retrieval failed: {type(err).__name__}: {err}") from err
    out = out.sort_values(_ROW).reset_index(drop=True)
    names = [c for c in out.columns if c in FEATURES]
    return out[[JOIN_KEY, TS, *names]]


def training_set(
    settings: Settings,
    entity_df: pd.DataFrame,
    service: str = DEFAULT_TASK,
    *,
    snapshot_id: int | None = None,
    out: str | Path | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    record: bool = True,
) -> TrainingSet:
    """Features as they were at each row's index time, from the lake at `snapshot_id` (current when None)."""
    from careloop.duck import connect
    from feature_store.derive import current_snapshot
    from feature_store.governance import check_model_inputs

    t = task(service)
    check_model_inputs(t.name, t.features)
    entity = _entity_frame(entity_df)
    own = con is None
    con = con or connect(settings)
    try:
        snap = current_snapshot(con) if snapshot_id is None else int(snapshot_id)
        _check_snapshot(con, snap)
        ensure_snapshot(settings, snap, con)
        frame = historical_features(settings, entity, t.name, snap)
        digest = content_hash(frame)
        ts_id = f"{t.name}-s{snap}-{digest[7:19]}"
        uri = None
        if out is not None:
            frame.to_parquet(out, index=False)
            uri = str(Path(out).resolve())
        result = TrainingSet(ts_id, t.name, snap, frame, digest, uri)
        if record:
            _record(settings, con, result, entity)
        return result
    finally:
        if own:
            con.close()


def _check_snapshot(con: duckdb.DuckDBPyConnection, snap: int) -> None:
    found = con.execute("SELECT count(*) FROM lake.snapshots() WHERE snapshot_id = ?", [snap]).fetchall()[0][0]
    if not found:
        raise FeatureStoreError(f"lake snapshot {snap} does not exist (expired, or from another lake)")


def reference_distributions(result: TrainingSet) -> list[dict[str, Any]]:
    """One row per feature: counts, moments, quantiles and a 10-bin histogram (numeric) or value counts."""
    import numpy as np
    import pandas as pd

    rows = []
    now = utcnow()
    for name in result.frame.columns:
        spec = FEATURES.get(name)
        if spec is None:
            continue
        col = result.frame[name]
        base = {
            "training_set_id": result.training_set_id,
            "service": result.service,
            "snapshot_id": result.snapshot_id,
            "feature": name,
            "view": spec.view,
            "n": len(col),
            "n_null": int(col.isna().sum()),
            "created_at": now,
        }
        if spec.dtype in ("float", "int"):
            v = pd.to_numeric(col, errors="coerce").dropna().astype(float).to_numpy()
            if len(v):
                counts, edges = np.histogram(v, bins=10)
                hist = {"edges": edges.round(9).tolist(), "counts": counts.tolist()}
                qs = {str(q): float(np.quantile(v, q)) for q in QUANTILES}
                stats = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
            else:
                hist, qs, stats = {"edges": [], "counts": []}, {}, {"mean": None, "std": None, "min": None, "max": None}
            rows.append(base | stats | {"kind": "numeric", "quantiles": json.dumps(qs), "histogram": json.dumps(hist)})
        else:
            counts = col.dropna().astype(str).value_counts().sort_index()
            rows.append(
                base
                | {
                    "kind": "categorical",
                    "mean": None,
                    "std": None,
                    "min": None,
                    "max": None,
                    "quantiles": None,
                    "histogram": json.dumps(counts.to_dict()),
                }
            )
    return rows


def _record(settings: Settings, con: duckdb.DuckDBPyConnection, result: TrainingSet, entity: pd.DataFrame) -> None:
    """`features.training_sets`, reference distributions, lineage dataset version and edges — one transaction."""
    import pyarrow as pa

    from careloop.duck import transaction
    from feature_store.derive import TS_FMT
    from feature_store.push import ensure_feature_schema
    from lineage import LineageWriter, ensure_schema

    ensure_feature_schema(con, settings)
    ensure_schema(con)
    writer = LineageWriter(settings, con=con)
    run_id = writer.start_run(
        "features.training_set",
        {"service": result.service, "snapshot_id": result.snapshot_id, "rows": len(result.frame)},
        flush=False,
    )
    writer.dataset_version(
        f"training_set:{result.training_set_id}",
        "training_set",
        result.training_set_id,
        snapshot_id=result.snapshot_id,
        content_hash=result.content_hash,
        row_count=len(result.frame),
        uri=result.uri,
    )
    writer.edge("lake", f"snapshot/{result.snapshot_id}", "training_set", result.training_set_id, "used")
    refs = pa.Table.from_pylist(reference_distributions(result))
    ts_row = pa.Table.from_pylist(
        [
            {
                "training_set_id": result.training_set_id,
                "service": result.service,
                "snapshot_id": result.snapshot_id,
                "entity_rows": len(result.frame),
                "content_hash": result.content_hash,
                "uri": result.uri,
                "run_id": run_id,
                "created_at": utcnow(),
            }
        ]
    )
    ent = pa.Table.from_pandas(entity[[JOIN_KEY, TS]], preserve_index=False)
    paths = snapshot_paths(settings, result.snapshot_id)
    used = {FEATURES[c].view for c in result.frame.columns if c in FEATURES}
    selects = []
    for v in VIEWS:
        if v.name not in used:
            continue
        p = str(paths.parquet(v.name)).replace("'", "''")
        selects.append(
            f"SELECT DISTINCT 'feature' AS src_kind, '{v.name}/' || f.person_id || '/' || "
            f"strftime(timezone('UTC', f.event_timestamp), '{TS_FMT}') AS src_id FROM ent e "
            f"ASOF JOIN read_parquet('{p}') f ON e.person_id = f.person_id AND e.event_timestamp >= f.event_timestamp "
            f"WHERE f.event_timestamp > e.event_timestamp - INTERVAL {v.ttl_days} DAY"
        )
    now = utcnow()

    def body(c: duckdb.DuckDBPyConnection) -> None:
        writer.write_into(c)
        c.execute("INSERT INTO features.training_sets SELECT * FROM _fs_ts_row")
        c.execute("INSERT INTO features.reference_distributions BY NAME SELECT * FROM _fs_refs")
        if selects:
            c.execute(
                "INSERT INTO lineage.edges (run_id, src_kind, src_id, dst_kind, dst_id, relation, recorded_at, attrs) "
                f"SELECT ?, src_kind, src_id, 'training_set', ?, 'used', ?, NULL FROM ({' UNION ALL '.join(selects)})",
                [run_id, result.training_set_id, now],
            )

    for name, table in (("_fs_ts_row", ts_row), ("_fs_refs", refs), ("ent", ent)):
        con.register(name, table)
    try:
        transaction(con, body)
    finally:
        for name in ("_fs_ts_row", "_fs_refs", "ent"):
            con.unregister(name)
    writer.end_run("succeeded")
