"""DuckDB connections to careloop's DuckLake, with the extensions loaded offline.

One DuckLake (SQLite catalog + Parquet data under `CARELOOP_HOME/lake/`) holds every stage's tables in its own
schema (`omop`, `lineage`, later `features`, `monitoring`, `registry`). One lake rather than one per stage so that a
stream micro-batch can commit OMOP rows *and* their lineage edges in a single transaction (DuckDB transactions
cannot write to two attached databases at once). Analysts `USE lake`, so `omop.person` and `lineage.runs` resolve.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from careloop.errors import LakeError
from careloop.settings import Settings

if TYPE_CHECKING:
    import duckdb

LAKE_ALIAS = "lake"
T = TypeVar("T")
_EXTENSION_PACKAGES = {
    "sqlite_scanner": "duckdb_extension_sqlite_scanner",
    "ducklake": "duckdb_extension_ducklake",
}


def extension_file(name: str) -> Path:
    """The `.duckdb_extension` shipped inside the PyPI package (DuckDB cannot download extensions offline)."""
    import duckdb

    package = _EXTENSION_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LakeError(
            f"DuckDB extension {name!r} is missing: install `{package.replace('_', '-')}=="
            f"{duckdb.__version__}` (make setup)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.rglob(f"{name}.duckdb_extension"))
    if not found:
        raise LakeError(f"no {name}.duckdb_extension inside {root}; reinstall {package}")
    return found[0]


def connect(settings: Settings, *, attach: bool = True, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached as `lake` and selected as the default catalog."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        for name in ("sqlite_scanner", "ducklake"):
            con.execute(f"LOAD '{extension_file(name)}'")
    except duckdb.Error as err:
        raise LakeError(f"cannot load DuckDB extensions: {err}") from err
    _gate_paths.pop(id(con), None)  # a closed connection's id may be reused
    if attach:
        attach_lake(con, settings, read_only=read_only)
    return con


def lake_paths(settings: Settings) -> tuple[Path, Path]:
    root = settings.path("lake")
    data = root / "data"
    data.mkdir(exist_ok=True)
    return root / "catalog.sqlite", data


_wal_checked: set[tuple[str, int]] = set()


def _use_wal(catalog: Path) -> None:
    """Put the SQLite catalog in WAL mode (persistent in the file): in the default rollback-journal mode one
    connection's open read blocks every writer's commit, which stalls the stream runner, the feature hook and the
    gateway's lineage writer that share the lake. WAL lets readers and one writer proceed together."""
    import sqlite3

    def key() -> tuple[str, int]:
        return str(catalog), catalog.stat().st_ino if catalog.exists() else -1

    if key() in _wal_checked:  # once per process and file: this opens the file with another SQLite library, which
        return  # is better done before this process's DuckDB connections hold locks on it
    try:
        db = sqlite3.connect(catalog, timeout=30)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
        _wal_checked.add(key())
    except sqlite3.Error:
        pass  # another process is switching it right now; WAL is sticky once set


def attach_lake(con: duckdb.DuckDBPyConnection, settings: Settings, *, read_only: bool = False) -> None:
    import duckdb

    catalog, data = lake_paths(settings)
    _use_wal(catalog)
    opts = f"DATA_PATH '{data}/'" + (", READ_ONLY" if read_only and catalog.exists() else "")
    for attempt in range(20):
        try:
            con.execute(f"ATTACH 'ducklake:sqlite:{catalog}' AS {LAKE_ALIAS} ({opts})")
            break
        except duckdb.Error as err:  # a concurrent first-time initialisation of the catalog
            if attempt == 19 or not is_conflict(err):
                raise LakeError(f"cannot open the lake catalog {catalog}: {err}") from err
            time.sleep(0.05 * (attempt + 1))
    con.execute(f"USE {LAKE_ALIAS}")
    _gate_paths[id(con)] = catalog.with_name("catalog.gate")


# -- the catalog gate --------------------------------------------------------------------------------------------
# DuckDB's SQLite extension opens a catalog connection at a transaction's first lake access and closes it at its
# end (the last one out checkpoints the WAL). Another process opening or closing at that moment gets SQLITE_BUSY,
# and the SQLite inside the extension is built without usleep: its busy handler and WAL retries sleep WHOLE
# SECONDS. Measured with one writer and one reader process in tight loops for 20 s: 15 stalls of 1.0-2.0 s; with
# the gate below on both, 1 each. The stream runner and the feature hook (the hot path) open and close their lake
# transactions under this gate: an exclusive lock file next to the catalog, held for the moments the catalog
# connection is opened or closed, not for the transaction. Other lake users (analysts, the gateway) do not take it
# and may still meet a rare one-second wait.
_gate_paths: dict[int, Path] = {}
_gates: dict[Path, _Gate] = {}
_gates_lock = threading.Lock()


class _Gate:
    """A per-process re-entrant lock plus an exclusive `flock` shared with other processes on the same lake."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> None:
        import fcntl
        import os

        self._lock.acquire()
        try:
            if self._depth == 0:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        import fcntl

        try:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()


def catalog_gate(con: duckdb.DuckDBPyConnection) -> contextlib.AbstractContextManager[None]:
    """Hold while a statement opens or closes the lake's catalog connection (BEGIN + first lake access, COMMIT,
    ROLLBACK, or a whole autocommit statement); a no-op for a connection without the lake."""
    path = _gate_paths.get(id(con))
    if path is None:
        return contextlib.nullcontext()
    with _gates_lock:
        gate = _gates.get(path)
        if gate is None:
            gate = _gates[path] = _Gate(path)
    return gate


def open_catalog(con: duckdb.DuckDBPyConnection) -> None:
    """A transaction's first lake access, so that its catalog connection opens now (call it under the gate)."""
    con.execute(f"SELECT * FROM ducklake_current_snapshot('{LAKE_ALIAS}')").fetchall()


# `ducklake_snapshots()` builds a row for every snapshot of the lake (~25 us each, measured: 0.1 s at 4,000
# snapshots), and a stream adds one per micro-batch, so a per-batch lookup through it would slow down by the hour.
# These read DuckLake's SQLite catalog tables through its own index instead (~1 ms at any size).
_CHANGE_KINDS = {  # the catalog's change names -> the names `ducklake_snapshots()` reports
    "created_schema": "schemas_created",
    "created_table": "tables_created",
    "created_view": "views_created",
    "inserted_into_table": "tables_inserted_into",
    "deleted_from_table": "tables_deleted_from",
    "altered_table": "tables_altered",
    "dropped_table": "tables_dropped",
    "dropped_schema": "schemas_dropped",
    "dropped_view": "views_dropped",
}
_CHANGE = re.compile(r'([a-z_]+):("(?:[^"]|"")*"(?:\."(?:[^"]|"")*")*|[^,]*)(?:,|$)')


def _catalog_query(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    # the query inline: a process's first parameterized `execute` costs ~0.5 s more (measured)
    quoted = sql.replace("'", "''")
    return con.execute(f"SELECT * FROM sqlite_query('__ducklake_metadata_{LAKE_ALIAS}', '{quoted}')").fetchall()


def snapshot_changes(con: duckdb.DuckDBPyConnection, after: int, upto: int) -> list[tuple[int, dict[str, list[str]]]]:
    """The lake's snapshots in (after, upto] with their changes, named and grouped as `ducklake_snapshots()`
    reports them (a change kind this version does not know keeps the catalog's name)."""
    rows = _catalog_query(
        con,
        "SELECT snapshot_id, changes_made FROM ducklake_snapshot_changes "
        f"WHERE snapshot_id > {int(after)} AND snapshot_id <= {int(upto)} ORDER BY snapshot_id",
    )
    log = []
    for snapshot, text in rows:
        changes: dict[str, list[str]] = {}
        for kind, value in _CHANGE.findall(text or ""):
            changes.setdefault(_CHANGE_KINDS.get(kind, kind), []).append(value)
        log.append((int(snapshot), changes))
    return log


def snapshot_time(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> datetime | None:
    """When lake snapshot `snapshot_id` was committed (UTC), or None if it does not exist."""
    rows = _catalog_query(con, f"SELECT snapshot_time FROM ducklake_snapshot WHERE snapshot_id = {int(snapshot_id)}")
    if not rows:
        return None
    # stored as text ('2026-12-07 23:14:46.836001+00'); parsed here, as DuckDB's first cast to TIMESTAMPTZ in a
    # process loads ICU's time-zone data (~0.7 s, measured)
    return datetime.fromisoformat(str(rows[0][0])).astimezone(UTC)


def is_conflict(err: Exception) -> bool:
    text = str(err).lower()
    return any(s in text for s in ("conflict", "database is locked", "busy", "unique constraint", "retry"))


def with_retry(fn: Callable[[], T], *, attempts: int = 30, base_delay: float = 0.02) -> T:
    """Run a transaction function, retrying DuckLake commit conflicts with jittered backoff."""
    import duckdb

    for attempt in range(attempts):
        try:
            return fn()
        except duckdb.Error as err:
            if attempt == attempts - 1 or not is_conflict(err):
                raise
            time.sleep(base_delay * (2 ** min(attempt, 6)) * (0.5 + random.random()))
    raise AssertionError("unreachable")


_active: dict[int, list[Callable[[], None]]] = {}


def in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    """True inside a `transaction()` body running on this connection."""
    return id(con) in _active


def after_commit(con: duckdb.DuckDBPyConnection, fn: Callable[[], None]) -> None:
    """Run `fn` once the enclosing `transaction()` has committed; dropped if that attempt rolls back (a retry
    re-runs the body, which registers again). Lets buffered writers keep their rows until they are durable."""
    _active[id(con)].append(fn)


def transaction(con: duckdb.DuckDBPyConnection, body: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """`body` inside BEGIN/COMMIT, retried as a whole on commit conflicts."""

    gate = catalog_gate(con)

    def run() -> T:
        _active[id(con)] = []
        con.execute("BEGIN TRANSACTION")
        try:
            if id(con) in _gate_paths:
                with gate:
                    open_catalog(con)
            result = body(con)
            with gate:
                con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception), gate:
                con.execute("ROLLBACK")
            _active.pop(id(con), None)
            raise
        for fn in _active.pop(id(con), []):
            fn()
        return result

    return with_retry(run)
