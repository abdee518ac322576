"""The raw vault: every original payload, AES-256-GCM encrypted with the vault key, addressed by event id.

The only place identified data exists after the gateway. One SQLite file (0600) rather than a file per event,
because the gateway writes thousands of small payloads a second; the event id is the GCM associated data, so a
ciphertext cannot be swapped to another event id undetected.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from pathlib import Path

from careloop.errors import CareloopError
from careloop.events import utcnow
from careloop.settings import Settings

PREFIX = "vault:"


def vault_ref(event_id: str) -> str:
    return f"{PREFIX}{event_id}"


class RawVault:
    """`put` buffers, `flush` makes the batch durable (call it before publishing), `get` decrypts with the key."""

    def __init__(self, settings: Settings | None, key: bytes | None = None, *, path: Path | None = None) -> None:
        """From `settings` (home/vault/vault.sqlite, the deployment's vault key), or an explicit `path` and `key`
        (an ingestion worker process)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if key is None:
            from careloop.secrets import load_key

            assert settings is not None
            key = load_key(settings, "vault")
        self._aead = AESGCM(_derive(key))
        if path is None:
            assert settings is not None
            folder = settings.path("vault")
            folder.chmod(0o700)
            path = folder / "vault.sqlite"
        self.path = path
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._con = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS payloads (event_id TEXT PRIMARY KEY, nonce BLOB, ciphertext BLOB, at TEXT)"
        )
        self._lock = threading.Lock()
        self._pending: list[tuple[str, bytes, bytes, str]] = []

    def put(self, event_id: str, payload: bytes) -> str:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, payload, event_id.encode())
        with self._lock:
            self._pending.append((event_id, nonce, ct, utcnow().isoformat()))
        return vault_ref(event_id)

    def flush(self) -> None:
        with self._lock:
            rows, self._pending = self._pending, []
            if rows:
                self._con.execute("BEGIN")
                self._con.executemany("INSERT OR IGNORE INTO payloads VALUES (?,?,?,?)", rows)
                self._con.execute("COMMIT")

    def get(self, ref_or_event_id: str) -> bytes:
        """The original payload; raises CareloopError if absent or if the key does not match."""
        from cryptography.exceptions import InvalidTag

        event_id = ref_or_event_id.removeprefix(PREFIX)
        try:
            uuid.UUID(event_id)
        except ValueError:
            raise CareloopError(f"not a vault reference: {ref_or_event_id!r}") from None
        self.flush()
        with self._lock:
            row = self._con.execute("SELECT nonce, ciphertext FROM payloads WHERE event_id=?", (event_id,)).fetchone()
        if row is None:
            raise CareloopError(f"no vault entry for event {event_id}")
        try:
            return self._aead.decrypt(row[0], row[1], event_id.encode())
        except InvalidTag:
            raise CareloopError(f"vault entry {event_id} cannot be decrypted with this vault key") from None

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._con.close()


def _derive(key: bytes) -> bytes:
    """A 256-bit AES key from the deployment vault key (which may be longer or 16+ bytes)."""
    import hashlib

    return key if len(key) == 32 else hashlib.sha256(b"careloop-vault\x1f" + key).digest()


def read_vault(settings: Settings, ref: str, key: bytes | None = None) -> bytes:
    """Read one original payload back (for replays); needs the vault key."""
    vault = RawVault(settings, key)
    try:
        return vault.get(ref)
    finally:
        vault.close()
