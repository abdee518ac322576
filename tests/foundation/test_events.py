from __future__ import annotations

import time
import uuid

from careloop.events import Event, EventHeaders, content_hash, event_id_for, utcnow
from careloop.kafka import EventConsumer, EventProducer


def _headers(payload: dict, source: str = "ehr-a") -> EventHeaders:
    digest = content_hash(payload)
    return EventHeaders(
        event_id=event_id_for(source, digest),
        event_type="fhir.Observation.upsert",
        source_system=source,
        site="site-1",
        occurred_at=utcnow(),
        content_hash=digest,
    )


def test_event_id_is_deterministic_per_source_and_content() -> None:
    a = {"resourceType": "Observation", "id": "1", "status": "final"}
    b = dict(reversed(list(a.items())))  # same content, other key order
    assert content_hash(a) == content_hash(b)
    assert event_id_for("x", content_hash(a)) == event_id_for("x", content_hash(b))
    assert event_id_for("x", content_hash(a)) != event_id_for("y", content_hash(a))
    assert content_hash(a) != content_hash(a | {"status": "amended"})


def test_headers_round_trip_through_kafka_encoding() -> None:
    h = _headers({"a": 1})
    wire = h.to_kafka()
    assert [k for k, _ in wire] == list(EventHeaders.model_fields)
    assert all(isinstance(v, bytes) for _, v in wire)
    assert EventHeaders.from_kafka(wire) == h


def test_produce_consume_round_trip_keys_and_headers(settings) -> None:
    topic = settings.topic("fhir")
    events = [
        Event(key=f"person-{i % 3}", value={"n": i, "resourceType": "Observation"}, headers=_headers({"n": i}))
        for i in range(30)
    ]
    with EventProducer(settings) as producer:
        acks = producer.send_many(topic, events)
    assert len(acks) == 30
    # a key always lands on one partition, so one person's events stay ordered
    by_key: dict[str, set[int]] = {}
    for ev, (part, _) in zip(events, acks, strict=True):
        by_key.setdefault(ev.key, set()).add(part)
    assert all(len(p) == 1 for p in by_key.values())

    got = []
    with EventConsumer(settings, [topic], group_id=f"g-{uuid.uuid4().hex}") as consumer:
        deadline = time.monotonic() + 30
        while len(got) < 30 and time.monotonic() < deadline:
            got.extend(consumer.poll(timeout_ms=500))
        consumer.commit()
    assert sorted(e.value["n"] for e in got) == list(range(30))
    sent = {e.headers.event_id: e for e in events}
    for e in got:
        assert e.headers == sent[e.headers.event_id].headers
        assert e.key == sent[e.headers.event_id].key
    for key in by_key:  # per-key order preserved
        ns = [e.value["n"] for e in got if e.key == key]
        assert ns == sorted(ns)


def test_manual_commit_resumes_where_it_left_off(settings) -> None:
    topic = settings.topic("outcomes")
    group = f"g-{uuid.uuid4().hex}"
    with EventProducer(settings) as producer:
        producer.send_many(topic, [Event(key="k", value={"n": i}, headers=_headers({"n": i})) for i in range(10)])

    def drain(consumer: EventConsumer, want: int) -> list[int]:
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while len(seen) < want and time.monotonic() < deadline:
            seen.extend(e.value["n"] for e in consumer.poll(timeout_ms=500, max_records=want - len(seen)))
        return seen

    with EventConsumer(settings, [topic], group_id=group) as c1:
        first = drain(c1, 4)
        c1.commit()
    with EventConsumer(settings, [topic], group_id=group) as c2:
        rest = drain(c2, 6)
        time.sleep(0.5)
        assert c2.poll(timeout_ms=500) == []
        assert sum(c2.lag().values()) == 0
    assert first + rest == list(range(10))
