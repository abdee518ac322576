"""The event envelope of DESIGN.md: key = pseudonymous person id, value = orjson JSON, typed headers."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1"
HEADER_NAMES = (
    "event_id",
    "event_type",
    "schema_version",
    "source_system",
    "site",
    "occurred_at",
    "ingested_at",
    "trace_id",
    "content_hash",
)
# Fixed namespace so that event ids derived from (source, content hash) are the same on every machine.
EVENT_NAMESPACE = uuid.UUID("6f1c2b1e-9a54-4a57-9d0c-2f4d8c0e7a11")


def utcnow() -> datetime:
    return datetime.now(UTC)


def content_hash(payload: bytes | str | dict[str, Any] | list[Any]) -> str:
    """SHA-256 of the canonical bytes (sorted keys for JSON), prefixed with the algorithm."""
    if isinstance(payload, dict | list):
        payload = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    elif isinstance(payload, str):
        payload = payload.encode()
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def event_id_for(source_system: str, digest: str) -> uuid.UUID:
    """Idempotency key: the same content from the same source always gets the same id."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{source_system}\x1f{digest}")


class EventHeaders(BaseModel):
    """Kafka headers of every careloop message (strings on the wire)."""

    model_config = ConfigDict(frozen=True)

    event_id: uuid.UUID
    event_type: str = Field(description="e.g. fhir.Observation.upsert, fhir.Patient.delete, dicom.instance")
    schema_version: str = SCHEMA_VERSION
    source_system: str
    site: str
    occurred_at: datetime
    ingested_at: datetime = Field(default_factory=utcnow)
    trace_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    content_hash: str

    def to_kafka(self) -> list[tuple[str, bytes]]:
        out = []
        for name in HEADER_NAMES:
            value = getattr(self, name)
            text = value.isoformat() if isinstance(value, datetime) else str(value)
            out.append((name, text.encode()))
        return out

    @classmethod
    def from_kafka(cls, headers: list[tuple[str, bytes]] | None) -> EventHeaders:
        raw = {k: v.decode() for k, v in (headers or []) if k in HEADER_NAMES}
        return cls.model_validate(raw)


class Event(BaseModel):
    """One message: the key is the pseudonymous person id (ordering), the value is de-identified JSON."""

    key: str | None
    value: Any
    headers: EventHeaders

    def value_bytes(self) -> bytes:
        return orjson.dumps(self.value)


class ConsumedEvent(Event):
    """An event as read back, with where it came from (for lineage and offset commits)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


class DeadLetter(BaseModel):
    """Value of a `deadletter` message: why something was rejected, never the identified payload itself."""

    stage: str = Field(description="gateway, publish, validation, deid, transform, features, ...")
    error_class: str
    reason: str = Field(description="human-readable, safe to show to an operator (no PHI)")
    original_event_id: uuid.UUID | None = None
    vault_ref: str | None = Field(None, description="where the encrypted original payload can be replayed from")
    payload: Any | None = Field(None, description="the original payload only when it is already de-identified")
    details: dict[str, Any] = Field(default_factory=dict)
