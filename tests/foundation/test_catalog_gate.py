"""The catalog gate (careloop.duck): the stream runner and the feature hook open and close their lake transactions
under one exclusive lock per lake, because the SQLite inside DuckDB's extension backs off in whole seconds when two
processes meet at those moments. These tests check the lock itself: shared across processes, re-entrant within a
thread, exclusive between threads, and absent for connections without the lake."""

from __future__ import annotations

import subprocess
import sys
import threading

from careloop.duck import catalog_gate, connect, transaction

_TRY = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
"""


def _other_process_can_take(path) -> bool:
    return subprocess.run([sys.executable, "-c", _TRY, str(path)], check=False).returncode == 0


def test_gate_excludes_other_processes_and_threads_and_is_reentrant(lake_settings):
    con = connect(lake_settings)
    try:
        gate_file = lake_settings.path("lake") / "catalog.gate"
        other_thread_got = threading.Event()

        def other_thread() -> None:
            with catalog_gate(con):
                other_thread_got.set()

        with catalog_gate(con):
            with catalog_gate(con):  # re-entrant: a transaction inside a gated section must not deadlock
                assert not _other_process_can_take(gate_file)
            assert not _other_process_can_take(gate_file)  # still held by the outer section
            t = threading.Thread(target=other_thread)
            t.start()
            t.join(0.3)
            assert not other_thread_got.is_set()
        t.join(10)
        assert other_thread_got.is_set()
        assert _other_process_can_take(gate_file)
        # a lake transaction takes and releases it, and its rows are committed
        transaction(con, lambda c: c.execute("CREATE TABLE IF NOT EXISTS main.gate_probe AS SELECT 1 AS x"))
        assert _other_process_can_take(gate_file)
        assert con.execute("SELECT count(*) FROM main.gate_probe").fetchone()[0] == 1
    finally:
        con.close()


def test_connection_without_the_lake_has_no_gate(lake_settings):
    con = connect(lake_settings, attach=False)
    try:
        with catalog_gate(con):
            assert not (lake_settings.path("lake") / "catalog.gate").exists()
    finally:
        con.close()
