"""Bearer API keys for the gateway, one or more per source system, stored only as SHA-256 hashes (0600 file).

A key is `clk_<key id>_<secret>`; the secret has 256 bits of entropy, so an unsalted SHA-256 is enough to make the
stored form useless to a reader of the file, and it keeps verification a dict lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from typing import Any

import orjson

from careloop.errors import CareloopError
from careloop.events import utcnow
from careloop.settings import Settings

SOURCE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeys:
    def __init__(self, settings: Settings) -> None:
        self.path = settings.path("keys") / "api_keys.json"
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._by_hash: dict[str, dict[str, Any]] = {}

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return orjson.loads(self.path.read_bytes()) or []

    def _save(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)

    def create(self, source: str) -> tuple[str, str]:
        """(key id, the key itself); the key is shown once and never stored."""
        if not SOURCE_NAME.match(source):
            raise CareloopError("source name must be 1-64 letters, digits, '.', '_' or '-'")
        key_id = secrets.token_hex(4)
        token = f"clk_{key_id}_{secrets.token_urlsafe(32)}"
        with self._lock:
            rows = self._load()
            rows.append({"key_id": key_id, "source": source, "sha256": _hash(token), "created": utcnow().isoformat()})
            self._save(rows)
        return key_id, token

    def list(self) -> list[dict[str, Any]]:
        return [{k: r[k] for k in ("key_id", "source", "created")} for r in self._load()]

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            rows = self._load()
            kept = [r for r in rows if r["key_id"] != key_id]
            self._save(kept)
        return len(kept) != len(rows)

    def verify(self, token: str | None) -> str | None:
        """The source system of a valid key, else None (re-reads the file when it changed)."""
        if not token:
            return None
        with self._lock:
            mtime = self.path.stat().st_mtime if self.path.exists() else None
            if mtime != self._mtime:
                self._by_hash = {r["sha256"]: r for r in self._load()}
                self._mtime = mtime
            h = _hash(token)
            row = self._by_hash.get(h)
        if row is None or not hmac.compare_digest(row["sha256"], h):
            return None
        return row["source"]
