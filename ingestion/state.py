"""Ingestion state under CARELOOP_HOME/ingest/state.sqlite (0600): the seen-store and the identity index.

It only ever holds pseudonyms and keyed hashes: event ids, pseudonymous resource ids and persons, and
`Pseudonymizer.identifier(None, value)` of patient identifiers — never a plain identifier.
SQLite (WAL) because the gateway and `careloop publish` may run at the same time on one home.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from careloop.events import utcnow
from careloop.settings import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    event_id TEXT PRIMARY KEY, resource_type TEXT, resource_id TEXT, person TEXT,
    topic TEXT, partition INTEGER, "offset" INTEGER, at TEXT);
CREATE TABLE IF NOT EXISTS identity (id_hash TEXT PRIMARY KEY, person TEXT NOT NULL, at TEXT);
CREATE TABLE IF NOT EXISTS resource_person (resource_key TEXT PRIMARY KEY, person TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resource_identifier (
    resource_type TEXT, id_hash TEXT, resource_id TEXT NOT NULL, PRIMARY KEY (resource_type, id_hash));
CREATE TABLE IF NOT EXISTS fallback_person (id_hash TEXT PRIMARY KEY, person TEXT NOT NULL, at TEXT);
"""


def _open(path: Path) -> sqlite3.Connection:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    con = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.executescript(SCHEMA)
    return con


class IngestState:
    """Thread-safe access to the seen-store and identity index."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.path("ingest") / "state.sqlite"
        self._con = _open(self.path)
        self._lock = threading.Lock()

    # -- seen-store (idempotency) ---------------------------------------------------------------------------------
    def seen(self, event_ids: Iterable[str]) -> dict[str, tuple[str | None, str | None, str | None]]:
        """event id -> (resource_type, resource_id, person) for the ids already published."""
        ids = list(event_ids)
        found: dict[str, tuple[str | None, str | None, str | None]] = {}
        with self._lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                q = f"SELECT event_id, resource_type, resource_id, person FROM seen WHERE event_id IN ({marks})"
                found.update((r[0], (r[1], r[2], r[3])) for r in self._con.execute(q, chunk))
        return found

    def mark_seen(self, rows: list[tuple[str, str | None, str | None, str | None, str, int, int]]) -> None:
        """rows: (event_id, resource_type, resource_id, person, topic, partition, offset)."""
        if not rows:
            return
        now = utcnow().isoformat()
        with self._lock:
            self._con.execute("BEGIN")
            self._con.executemany("INSERT OR IGNORE INTO seen VALUES (?,?,?,?,?,?,?,?)", [(*r, now) for r in rows])
            self._con.execute("COMMIT")

    # -- identity index --------------------------------------------------------------------------------------------
    def index_identifiers(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Record identifier hash -> person; returns (earlier fallback person, person) for DICOM that came first."""
        if not pairs:
            return []
        now = utcnow().isoformat()
        with self._lock:
            self._con.execute("BEGIN")
            self._con.executemany(
                "INSERT INTO identity VALUES (?,?,?) ON CONFLICT(id_hash) DO UPDATE SET person=excluded.person, "
                "at=excluded.at",
                [(h, p, now) for h, p in pairs],
            )
            links = []
            for h, p in pairs:
                row = self._con.execute("SELECT person FROM fallback_person WHERE id_hash=?", (h,)).fetchone()
                if row and row[0] != p:
                    links.append((row[0], p))
            self._con.execute("COMMIT")
        return links

    def person_for_identifier(self, id_hash: str) -> str | None:
        with self._lock:
            row = self._con.execute("SELECT person FROM identity WHERE id_hash=?", (id_hash,)).fetchone()
        return row[0] if row else None

    def record_fallback(self, id_hash: str, person: str) -> None:
        with self._lock:
            self._con.execute(
                "INSERT OR IGNORE INTO fallback_person VALUES (?,?,?)", (id_hash, person, utcnow().isoformat())
            )

    # -- resource -> person (so that deletes keep a person's events in one partition) ---------------------------
    def remember_persons(self, rows: list[tuple[str, str]]) -> None:
        if not rows:
            return
        with self._lock:
            self._con.execute("BEGIN")
            self._con.executemany("INSERT OR REPLACE INTO resource_person VALUES (?,?)", rows)
            self._con.execute("COMMIT")

    def person_of_resource(self, resource_key: str) -> str | None:
        with self._lock:
            row = self._con.execute(
                "SELECT person FROM resource_person WHERE resource_key=?", (resource_key,)
            ).fetchone()
        return row[0] if row else None

    # -- resource identifiers (conditional references to non-Patient resources) --------------------------------
    def index_resource_identifiers(self, rows: list[tuple[str | None, str, str | None]]) -> None:
        """rows: (resource_type, keyed identifier hash, pseudonymous resource id)."""
        if not rows:
            return
        with self._lock:
            self._con.execute("BEGIN")
            self._con.executemany("INSERT OR REPLACE INTO resource_identifier VALUES (?,?,?)", rows)
            self._con.execute("COMMIT")

    def resource_for_identifier(self, resource_type: str, id_hash: str) -> str | None:
        with self._lock:
            row = self._con.execute(
                "SELECT resource_id FROM resource_identifier WHERE resource_type=? AND id_hash=?",
                (resource_type, id_hash),
            ).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._con.close()
