"""Historical backfill: feature rows for all persons over one lake snapshot, computed with Dask.

Persons are split into partitions; each Dask task opens its own lake connection and runs the same SQL derivation
as the stream hook, reading `AT (VERSION => snapshot)`. The local threaded scheduler is the default (DuckDB
releases the GIL); `CARELOOP_DASK_SCHEDULER_ADDRESS` sends the same tasks to a `dask.distributed` cluster whose
workers can reach the lake. The result is the snapshot's offline store (`features/snapshots/<id>/offline/`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from careloop.events import utcnow
from careloop.settings import Settings
from feature_store.definitions import VIEWS
from feature_store.repo import CREATED, snapshot_paths, view_schema

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

MARKER = "_SUCCESS.json"


@dataclass
class BackfillResult:
    snapshot_id: int
    persons: int
    rows: int
    partitions: int
    scheduler: str
    uri: str
    start: str | None
    end: str | None
    run_id: str | None = None


def _partition(
    settings: Settings, snapshot_id: int, persons: list[int], start: datetime | None, end: datetime | None
) -> tuple[pa.Table, pa.Table]:
    from careloop.duck import connect
    from feature_store.derive import derive

    con = connect(settings, read_only=True)
    try:
        d = derive(con, snapshot_id=snapshot_id, persons=persons, start=start, end=end)
        return d.rows, d.edges
    finally:
        con.close()


def _compute(tasks: list[Any], settings: Settings) -> tuple[list[Any], str]:
    import dask

    if settings.dask_scheduler_address:
        from dask.distributed import Client

        with Client(settings.dask_scheduler_address) as client:
            return list(dask.compute(*tasks, scheduler=client.get)), f"distributed:{settings.dask_scheduler_address}"
    workers = max(1, min(len(tasks), os.cpu_count() or 1))
    return list(dask.compute(*tasks, scheduler="threads", num_workers=workers)), "threads"


def snapshot_ready(settings: Settings, snapshot_id: int) -> dict[str, Any] | None:
    marker = snapshot_paths(settings, snapshot_id).root / MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


def backfill(
    settings: Settings,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    snapshot_id: int | None = None,
    partitions: int | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    lineage: bool = True,
) -> BackfillResult:
    """Derive every person's feature rows in [start, end] at `snapshot_id` (current when None) into the
    snapshot's offline store, and record the run (snapshot id, rows) in `features.backfills` and lineage."""
    import dask
    import pyarrow as pa
    import pyarrow.parquet as pq

    from careloop.duck import connect, transaction
    from feature_store.derive import current_snapshot, split_views
    from feature_store.lineage import insert_edges
    from feature_store.push import ensure_feature_schema
    from feature_store.repo import open_store
    from lineage import LineageWriter, ensure_schema

    own = con is None
    con = con or connect(settings)
    try:
        snap = current_snapshot(con) if snapshot_id is None else int(snapshot_id)
        persons = [
            int(r[0])
            for r in con.execute(
                f"SELECT DISTINCT person_id FROM omop.person AT (VERSION => {snap}) ORDER BY 1"
            ).fetchall()
        ]
        n = max(1, min(partitions or max(1, len(persons) // 2000 + 1) * 2, max(1, len(persons))))
        chunks = [persons[i::n] for i in range(n)] if persons else []
        tasks = [dask.delayed(_partition)(settings, snap, c, start, end) for c in chunks if c]
        results, scheduler = _compute(tasks, settings) if tasks else ([], "none")
        from feature_store.derive import _empty_rows

        rows = pa.concat_tables([r for r, _ in results]) if results else _empty_rows(con)
        edges = pa.concat_tables([e for _, e in results]) if results else None
        rows = rows.sort_by([("person_id", "ascending"), ("event_timestamp", "ascending")])
        paths = snapshot_paths(settings, snap)
        paths.offline.mkdir(parents=True, exist_ok=True)
        created = pa.array([utcnow()] * rows.num_rows, pa.timestamp("us", tz="UTC"))
        for view, table in split_views(rows).items():
            spec = next(v for v in VIEWS if v.name == view)
            table = table.append_column(CREATED, created).select([f.name for f in view_schema(spec)])
            table = table.cast(view_schema(spec))
            tmp = paths.parquet(view).with_suffix(".tmp")
            pq.write_table(table, tmp)
            tmp.replace(paths.parquet(view))
        open_store(settings, snap)  # registers the snapshot repo (idempotent)
        result = BackfillResult(
            snap,
            len(persons),
            rows.num_rows,
            len(tasks),
            scheduler,
            str(paths.offline),
            start.isoformat() if start else None,
            end.isoformat() if end else None,
        )
        ensure_feature_schema(con, settings)
        ensure_schema(con)
        writer = LineageWriter(settings, con=con)
        result.run_id = writer.start_run("features.backfill", asdict(result), flush=False)
        for view in split_views(rows):
            writer.dataset_version(
                f"features:{view}",
                "feature_view",
                f"snapshot-{snap}",
                snapshot_id=snap,
                row_count=rows.num_rows,
                uri=str(paths.parquet(view)),
            )
        record = pa.Table.from_pylist(
            [
                {
                    "run_id": result.run_id,
                    "snapshot_id": snap,
                    "start_time": start,
                    "end_time": end,
                    "persons": len(persons),
                    "rows": rows.num_rows,
                    "partitions": len(tasks),
                    "scheduler": scheduler,
                    "uri": result.uri,
                    "created_at": utcnow(),
                }
            ]
        )

        def body(c: duckdb.DuckDBPyConnection) -> None:
            writer.write_into(c)
            c.execute("INSERT INTO features.backfills SELECT * FROM _fs_backfill_record")

        con.register("_fs_backfill_record", record)
        try:
            transaction(con, body)
        finally:
            con.unregister("_fs_backfill_record")
        if lineage and edges is not None and edges.num_rows:
            insert_edges(settings, con, edges, job="features.backfill", run_id=result.run_id)
        writer.end_run("succeeded")
        (paths.root / MARKER).write_text(json.dumps(asdict(result)))
        return result
    finally:
        if own:
            con.close()
