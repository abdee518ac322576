"""Producer and consumer wrappers with settings that are right for both Tansu (local) and real Kafka.

Why these settings: idempotent producer with acks=all so retries never duplicate; lz4 compression (cheap CPU);
manual commits so a stage commits offsets only after its sink is durable; a 6 s session / 2 s heartbeat because
Tansu holds a group join for half the session timeout (STACK.md), which is also valid on real Kafka.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from careloop.errors import BrokerError
from careloop.events import ConsumedEvent, Event, EventHeaders
from careloop.settings import Settings


def resolve_bootstrap(settings: Settings) -> str:
    """The cluster to talk to: `CARELOOP_KAFKA_BOOTSTRAP`, else the running local broker."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    from careloop.broker import LocalBroker

    state = LocalBroker(settings).state()
    if state is None:
        raise BrokerError("no Kafka broker: run `careloop broker start` or set CARELOOP_KAFKA_BOOTSTRAP")
    return state.bootstrap


def client_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": 30_000,
    }
    if settings.kafka_sasl_mechanism:
        cfg |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password,
        }
    if settings.kafka_ssl_cafile:
        cfg["ssl_cafile"] = settings.kafka_ssl_cafile
    return cfg


class EventProducer:
    """Publishes `Event`s; `send` returns (partition, offset) once the broker acknowledged it."""

    def __init__(self, settings: Settings, bootstrap: str | None = None, **overrides: Any) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.settings = settings
        cfg = client_config(settings, bootstrap or resolve_bootstrap(settings)) | {
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": "lz4",
            "linger_ms": 5,
            "max_request_size": settings.max_message_bytes + 64 * 1024,
            "max_block_ms": 30_000,
        }
        try:
            self._producer = KafkaProducer(**(cfg | overrides))
        except KafkaError as err:
            raise BrokerError(f"cannot connect to Kafka at {cfg['bootstrap_servers']}: {err}") from err

    def send_async(self, topic: str, event: Event) -> Any:
        return self._producer.send(
            topic,
            key=event.key.encode() if event.key is not None else None,
            value=event.value_bytes(),
            headers=event.headers.to_kafka(),
        )

    def send(self, topic: str, event: Event, timeout: float = 30.0) -> tuple[int, int]:
        meta = self.send_async(topic, event).get(timeout=timeout)
        return meta.partition, meta.offset

    def send_many(self, topic: str, events: Iterable[Event], timeout: float = 60.0) -> list[tuple[int, int]]:
        futures = [self.send_async(topic, e) for e in events]
        self._producer.flush(timeout=timeout)
        return [(m.partition, m.offset) for m in (f.get(timeout=timeout) for f in futures)]

    def flush(self, timeout: float = 60.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.close(timeout=10)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventConsumer:
    """Consumes `ConsumedEvent`s with manual commits: call `commit()` only after the sink is durable."""

    def __init__(
        self,
        settings: Settings,
        topics: list[str],
        group_id: str,
        bootstrap: str | None = None,
        **overrides: Any,
    ) -> None:
        from kafka import KafkaConsumer

        cfg = client_config(settings, bootstrap or resolve_bootstrap(settings)) | {
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 2000,
            "max_partition_fetch_bytes": settings.max_message_bytes + 64 * 1024,
            "fetch_max_bytes": max(52_428_800, settings.max_message_bytes * 2),
        }
        self._consumer = KafkaConsumer(**(cfg | overrides))
        self._consumer.subscribe(topics)
        self.last_seen: dict[tuple[str, int], int] = {}
        self.highwater: dict[tuple[str, int], int] = {}

    def poll(self, timeout_ms: int = 1000, max_records: int = 500) -> list[ConsumedEvent]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[ConsumedEvent] = []
        for tp, records in batches.items():
            hw = self._consumer.highwater(tp)
            if hw is not None:
                self.highwater[(tp.topic, tp.partition)] = hw
            for r in records:
                out.append(decode_record(r))
                self.last_seen[(tp.topic, tp.partition)] = r.offset
        return out

    def __iter__(self) -> Iterator[ConsumedEvent]:
        while True:
            yield from self.poll()

    def lag(self) -> dict[tuple[str, int], int]:
        """Lag from fetched high-watermarks (Tansu's end_offsets is wrong; STACK.md)."""
        return {tp: max(0, hw - self.last_seen.get(tp, -1) - 1) for tp, hw in self.highwater.items()}

    def commit(self) -> None:
        self._consumer.commit()

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_record(record: Any) -> ConsumedEvent:
    return ConsumedEvent(
        key=record.key.decode() if record.key is not None else None,
        value=orjson.loads(record.value) if record.value is not None else None,
        headers=EventHeaders.from_kafka(record.headers),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
    )
