"""The stream runner's hook: after each lake commit, recompute the touched persons' features and push them."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from careloop.events import utcnow
from careloop.settings import Settings
from feature_store.derive import derive, split_views
from feature_store.errors import FeatureStoreError

if TYPE_CHECKING:
    import duckdb


class StreamFeatureHook:
    """Callable on a `BatchCommit` (duck-typed: `.person_ids`, `.snapshot_id`, optional `.min_event_time`).

    Recomputes, at the batch's lake snapshot, every feature row of the touched persons from the batch's earliest
    event time on (a late or corrected event changes exactly those rows) plus each person's current row, and
    pushes them online (latest per person) and offline (all). Raises on any failure, so the runner retries the
    batch and does not commit its Kafka offsets: nothing is lost, and a retried push rewrites the same values.
    """

    def __init__(self, settings: Settings, *, lineage: bool = True) -> None:
        self.settings = settings
        self.lineage = lineage
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()
        self.last_stats: dict[str, Any] = {}

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            from careloop.duck import connect

            self._con = connect(self.settings)
            # A micro-batch derivation touches a few persons: one thread does it with half the CPU of two
            # (measured), and leaves the other core to the stream runner.
            self._con.execute("SET threads = 1")
        return self._con

    def warm(self) -> None:
        """Open the lake connection and the Feast store (importing Feast takes seconds), so that the first batch
        does not pay for them. `careloop.hook_process` calls it when the hook's process starts."""
        from feature_store.repo import feature_views, open_store

        _ = self.con
        feature_views(open_store(self.settings))

    def __call__(self, batch: Any) -> dict[str, Any]:
        persons = sorted({int(p) for p in batch.person_ids})
        if not persons:
            return {"persons": 0, "rows": 0}
        from feature_store.push import push_frames

        with self._lock:
            t0, c0 = time.perf_counter(), time.process_time()
            since = getattr(batch, "min_event_time", None)
            # +1 day of slack: drug exposures end at day granularity and must never be cut off by clock skew
            derived = derive(
                self.con,
                snapshot_id=getattr(batch, "snapshot_id", None),
                persons=persons,
                since=since,
                end=utcnow() + timedelta(days=1),
                include_latest=True,
                with_edges=self.lineage,
            )
            t1 = time.perf_counter()
            rows = derived.rows
            # Every derived row joined omop.person at the batch's snapshot, so its entity is known by construction;
            # types are still checked (a strict Arrow cast) before anything is written.
            known = {int(p) for p in rows.column("person_id").to_pylist()}
            push_frames(
                self.settings,
                split_views(rows),
                con=self.con,
                source="stream",
                known_persons=known,
                part_name=_part_name(derived.snapshot_id, persons, since),
            )
            t2 = time.perf_counter()
            if self.lineage and derived.edges.num_rows:
                self._write_edges(derived)
            t3 = time.perf_counter()
            self.last_stats = {
                "persons": len(persons),
                "rows": rows.num_rows,
                "snapshot_id": derived.snapshot_id,
                "derive_s": t1 - t0,
                "push_s": t2 - t1,
                "lineage_s": t3 - t2,
                "total_s": t3 - t0,
                "cpu_s": time.process_time() - c0,
            }
            return self.last_stats

    def _write_edges(self, derived: Any) -> None:
        from feature_store.lineage import insert_edges

        try:
            insert_edges(
                self.settings,
                self.con,
                derived.edges,
                job="features.stream",
                params={"snapshot_id": derived.snapshot_id},
            )
        except Exception as err:
            raise FeatureStoreError(f"feature lineage write failed: {err}") from err

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _part_name(snapshot_id: int, persons: list[int], since: Any) -> str:
    """Offline part-file name of one batch: a retry of the same batch replaces its own files."""
    import hashlib

    digest = hashlib.sha256(f"{persons}|{since}".encode()).hexdigest()[:16]
    return f"s{int(snapshot_id):012d}-{digest}"
