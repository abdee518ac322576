"""The batched lineage writer every stage uses.

Stages buffer provenance rows in memory and flush them in one lake transaction per batch: a row per event would
cost a DuckLake commit (and Parquet file) each. `write_into(con)` lets a stage put the buffered rows inside its
*own* transaction, so data and its lineage commit atomically (the stream runner does this).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, Field

from careloop.duck import transaction
from careloop.events import utcnow
from careloop.settings import Settings

if TYPE_CHECKING:
    import duckdb

TABLES = ("run_log", "dataset_versions", "edges", "ingest_events")


class IngestRecord(BaseModel):
    """What the gateway records about every accepted, duplicate or rejected event."""

    event_id: str
    status: str = Field(pattern="^(accepted|duplicate|rejected)$")
    stage: str | None = None
    event_type: str | None = None
    source_system: str | None = None
    site: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    content_hash: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    vault_ref: str | None = None
    reason: str | None = None


def code_version() -> str:
    from careloop import __version__

    return __version__


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else orjson.dumps(value, default=str).decode()


class LineageWriter:
    """Buffers lineage rows; thread-safe; flushes on `flush()`, when the buffer is full, or on exit."""

    def __init__(
        self, settings: Settings, *, con: duckdb.DuckDBPyConnection | None = None, max_buffer: int = 10_000
    ) -> None:
        self.settings = settings
        self._con = con
        self.max_buffer = max_buffer
        self._lock = threading.RLock()
        self._rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
        self.run_id: str | None = None
        self.flushed_rows = 0

    # -- connection ----------------------------------------------------------------------------------------------
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            from lineage.store import open_store

            self._con = open_store(self.settings)
        return self._con

    # -- runs ----------------------------------------------------------------------------------------------------
    def start_run(self, job: str, parameters: Mapping[str, Any] | None = None, *, flush: bool = True) -> str:
        self.run_id = str(uuid.uuid4())
        self._add(
            "run_log",
            run_id=self.run_id,
            job=job,
            status="started",
            at=utcnow(),
            code_version=code_version(),
            parameters=_json(parameters),
            host=socket.gethostname(),
            pid=os.getpid(),
            message=None,
        )
        self._job = job
        if flush:
            self.flush()
        return self.run_id

    def end_run(self, status: str = "succeeded", message: str | None = None) -> None:
        if self.run_id is None:
            return
        self._add(
            "run_log",
            run_id=self.run_id,
            job=self._job,
            status=status,
            at=utcnow(),
            code_version=code_version(),
            parameters=None,
            host=socket.gethostname(),
            pid=os.getpid(),
            message=message,
        )
        self.flush()

    # -- records -------------------------------------------------------------------------------------------------
    def edge(
        self,
        src_kind: str,
        src_id: str,
        dst_kind: str,
        dst_id: str,
        relation: str = "derived",
        attrs: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        self._add(
            "edges",
            run_id=self.run_id,
            src_kind=src_kind,
            src_id=src_id,
            dst_kind=dst_kind,
            dst_id=dst_id,
            relation=relation,
            recorded_at=at or utcnow(),
            attrs=_json(attrs),
        )

    def ingest_event(self, record: IngestRecord) -> None:
        self._add("ingest_events", **record.model_dump(), run_id=self.run_id, recorded_at=utcnow())

    def ingest_event_rows(self, rows: list[dict[str, Any]]) -> None:
        """Many ingest records at once, as dicts with exactly the `IngestRecord` fields (trusted internal callers:
        the gateway records thousands a second, and a model per row costs more than the lake write)."""
        if not rows:
            return
        now = utcnow()
        for r in rows:
            r["run_id"], r["recorded_at"] = self.run_id, now
        self._extend("ingest_events", rows)

    def edge_rows(self, edges: Sequence[tuple[Any, ...]]) -> None:
        """Many edges at once: (src_kind, src_id, dst_kind, dst_id, relation[, attrs]) — the bulk form of `edge`."""
        if not edges:
            return
        now = utcnow()
        run_id = self.run_id
        self._extend(
            "edges",
            [
                {
                    "run_id": run_id,
                    "src_kind": e[0],
                    "src_id": e[1],
                    "dst_kind": e[2],
                    "dst_id": e[3],
                    "relation": e[4],
                    "recorded_at": now,
                    "attrs": _json(e[5]) if len(e) > 5 else None,
                }
                for e in edges
            ],
        )

    def dataset_version(
        self,
        dataset: str,
        kind: str,
        version: str,
        *,
        snapshot_id: int | None = None,
        content_hash: str | None = None,
        row_count: int | None = None,
        uri: str | None = None,
    ) -> None:
        self._add(
            "dataset_versions",
            dataset=dataset,
            kind=kind,
            version=version,
            snapshot_id=snapshot_id,
            content_hash=content_hash,
            row_count=row_count,
            uri=uri,
            run_id=self.run_id,
            created_at=utcnow(),
        )

    def pending(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._rows.values())

    def _add(self, table: str, **row: Any) -> None:
        with self._lock:
            self._rows[table].append(row)
            full = self.pending() >= self.max_buffer
        if full:
            self.flush()

    def _extend(self, table: str, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows[table].extend(rows)
            full = self.pending() >= self.max_buffer
        if full:
            self.flush()

    # -- writing -------------------------------------------------------------------------------------------------
    def _take(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            taken, self._rows = self._rows, {t: [] for t in TABLES}
            return taken

    def _restore(self, taken: dict[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            for t, rows in taken.items():
                self._rows[t][:0] = rows

    @staticmethod
    def _insert(con: duckdb.DuckDBPyConnection, taken: dict[str, list[dict[str, Any]]]) -> int:
        import pyarrow as pa

        n = 0
        for table, rows in taken.items():
            if not rows:
                continue
            arrow = pa.Table.from_pylist(rows)  # noqa: F841  (referenced by name in SQL)
            cols = ", ".join(f'"{c}"' for c in rows[0])
            con.execute(f"INSERT INTO lineage.{table} ({cols}) SELECT {cols} FROM arrow")
            n += len(rows)
        return n

    def write_into(self, con: duckdb.DuckDBPyConnection) -> int:
        """Insert the buffered rows inside the caller's open transaction, so data and lineage commit atomically.

        Inside `careloop.duck.transaction` the rows stay buffered until that transaction commits: a retried attempt
        (commit conflict) inserts them again instead of losing them, and a failed one leaves them for later."""
        from careloop.duck import after_commit, in_transaction

        if not in_transaction(con):
            taken = self._take()
            try:
                return self._insert(con, taken)
            except BaseException:
                self._restore(taken)
                raise
        with self._lock:
            snapshot = {t: list(rows) for t, rows in self._rows.items()}
        n = self._insert(con, snapshot)
        after_commit(con, lambda: self._drop(snapshot))
        return n

    def _drop(self, written: dict[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            for t, rows in written.items():
                done = {id(r) for r in rows}
                self._rows[t] = [r for r in self._rows[t] if id(r) not in done]
        self.flushed_rows += sum(len(v) for v in written.values())

    def flush(self) -> int:
        """Write everything buffered in one transaction (retried on commit conflicts); returns rows written."""
        taken = self._take()
        if not any(taken.values()):
            return 0
        try:
            n = transaction(self.con, lambda c: self._insert(c, taken))
        except BaseException:
            self._restore(taken)
            raise
        self.flushed_rows += n
        return n

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> LineageWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.run_id is not None and exc_type is not None:
            self.end_run("failed", message=type(exc).__name__)
        self.flush()


def insert_edges_from(con: duckdb.DuckDBPyConnection, select_sql: str, params: Mapping[str, Any] | None = None, *,
                      run_id: str | None) -> None:  # fmt: skip
    """Set-based edges inside the caller's open transaction: `select_sql` yields (src_kind, src_id, dst_kind, dst_id,
    relation, attrs JSON text or NULL) rows, typically from tables the caller registered. For stages whose lineage is
    too large for row-by-row buffering (a stream batch's per-record edges, a training set's feature edges); the
    `edges` table's layout stays this package's business. `params` are named (`$name`); `$_run`/`$_now` are taken."""
    con.execute(
        "INSERT INTO lineage.edges (run_id, src_kind, src_id, dst_kind, dst_id, relation, recorded_at, attrs) "
        f"SELECT $_run, src_kind, src_id, dst_kind, dst_id, relation, $_now, attrs FROM ({select_sql}) "
        "AS e(src_kind, src_id, dst_kind, dst_id, relation, attrs)",
        {**(params or {}), "_run": run_id, "_now": utcnow()},
    )
