"""The streaming runner: Kafka (`fhir`, `dicom`) -> Beam (in-process) -> OMOP lake, in micro-batches.

Order of effects per micro-batch, which is what makes a crash at any point safe:
  1. poll up to `batch_size` events (or until `max_wait_ms` passed since the first one);
  2. run `FhirToOmop` on Beam's in-process FnApiRunner;
  3. commit the lake transaction (rows, versions, DQ, lineage edges, status row) — idempotent on replay;
  4. publish dead letters (at-least-once: a replayed batch may publish a dead letter twice);
  5. run the `on_batch_committed` hooks (retried with backoff; a hook that keeps failing stops the runner
     *before* the offsets are committed, so the batch is replayed after a restart);
  6. commit the Kafka offsets.
Kafka's source is consumed in Python because Beam's `ReadFromKafka` needs a Java expansion service (STACK.md);
a deployment with Java can run the same PTransforms behind Beam's own Kafka IO.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from careloop.events import ConsumedEvent, DeadLetter, Event, EventHeaders, content_hash, utcnow
from careloop.settings import Settings

log = logging.getLogger(__name__)
GROUP_ID = "careloop-transforms"


@dataclass
class BatchCommit:
    """Handed to `on_batch_committed` hooks after the lake commit, before the Kafka offset commit.

    `person_keys` are the pseudonymous persons of *every* event in the batch (also re-delivered ones, so that a
    batch replayed after a crash re-triggers the hooks, which must therefore be idempotent); `person_ids` are
    the OMOP person_ids whose rows changed in this commit.
    """

    batch_id: str
    snapshot_id: int | None
    person_keys: set[str]
    person_ids: set[int]
    min_event_time: datetime | None
    max_event_time: datetime | None
    events: int
    rows_written: int
    rows_by_table: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0


@dataclass
class StreamSummary:
    batches: int = 0
    events: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    stopped_by: str = "idle"

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class HookFailed(RuntimeError):
    """A batch hook kept failing: offsets were not committed, the batch will be replayed."""


def envelope(ev: ConsumedEvent) -> dict[str, Any]:
    h = ev.headers
    return {"topic": ev.topic, "partition": ev.partition, "offset": ev.offset, "key": ev.key,
            "headers": {"event_id": str(h.event_id), "event_type": h.event_type, "content_hash": h.content_hash,
                        "occurred_at": h.occurred_at.isoformat(), "source_system": h.source_system, "site": h.site},
            "value": ev.value}  # fmt: skip


class StreamRunner:
    """Consumes `fhir` + `dicom` and keeps the OMOP lake up to date; see the module docstring for the order."""

    def __init__(self, settings: Settings, *, batch_size: int = 5000, max_wait_ms: int = 1000,
                 group_id: str = GROUP_ID, on_batch_committed: Sequence[Callable[[BatchCommit], None]] = (),
                 hook_attempts: int = 5, compact_every: int = 20, hook_backoff_s: float = 0.5, beam_runner: Any = None,
                 install_signal_handlers: bool = False) -> None:  # fmt: skip
        self.settings = settings
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.group_id = group_id
        self.hooks = list(on_batch_committed)
        self.hook_attempts = hook_attempts
        self.compact_every = compact_every
        self.hook_backoff_s = hook_backoff_s
        self.beam_runner = beam_runner
        self._stop = threading.Event()
        self._stop_reason = "idle"
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info("signal %s: finishing the current batch, then exiting", signum)
        self.stop(signal.Signals(signum).name)

    def stop(self, reason: str = "stopped") -> None:
        self._stop_reason = reason
        self._stop.set()

    # -- main loop --------------------------------------------------------------------------------------------------
    def run(self, *, until_idle: float | None = None, max_batches: int | None = None) -> StreamSummary:
        from careloop.duck import connect
        from careloop.kafka import EventConsumer, EventProducer
        from lineage import LineageWriter, ensure_schema
        from transforms.lake_writer import LakeWriter
        from transforms.omop_schema import ensure_omop_schema
        from transforms.vocab import Vocabulary

        con = connect(self.settings)
        ensure_schema(con)
        ensure_omop_schema(con)
        vocab = Vocabulary.from_lake(con)
        if not len(vocab):
            log.warning("the vocabulary is empty: every code maps to concept 0 (run `careloop vocab load`)")
        writer = LakeWriter(con)
        lineage = LineageWriter(self.settings, con=con, max_buffer=1 << 40)
        run_id = lineage.start_run(
            "transforms.stream",
            {"batch_size": self.batch_size, "max_wait_ms": self.max_wait_ms, "group": self.group_id},
        )
        topics = [self.settings.topic("fhir"), self.settings.topic("dicom")]
        consumer = EventConsumer(self.settings, topics, self.group_id)
        producer: EventProducer | None = None
        workdir = str(self.settings.path("transforms", "work", f"{os.getpid()}-{uuid.uuid4().hex[:8]}"))
        summary = StreamSummary()
        started = time.monotonic()
        idle_since = time.monotonic()
        status = "succeeded"
        try:
            while not self._stop.is_set():
                if max_batches is not None and summary.batches >= max_batches:
                    self._stop_reason = "max_batches"
                    break
                events = self._poll_batch(consumer)
                if not events:
                    if not _assigned(consumer) and time.monotonic() - started < 60:
                        idle_since = time.monotonic()  # the group join is still running: not idle yet
                    elif until_idle is not None and time.monotonic() - idle_since >= until_idle:
                        self._stop_reason = "idle"
                        break
                    continue
                t0 = time.monotonic()
                envs = [envelope(e) for e in events]
                from transforms.pipeline import run_batch

                results = run_batch(envs, workdir, vocab, runner=self.beam_runner)
                lag = consumer.lag()
                elapsed = time.monotonic() - t0
                outcome = writer.commit(results, run_id=run_id, lineage=lineage, status={
                    "batch_seq": summary.batches, "mode": "stream", "events": len(events),
                    "resources": sum(1 for r in results if r["status"] != "deadletter"),
                    "batch_latency_ms": elapsed * 1000, "events_per_s": len(events) / elapsed if elapsed else None,
                    "consumer_lag": sum(lag.values()),
                    "lag_detail": orjson.dumps({f"{t}/{p}": n for (t, p), n in lag.items()}).decode()})  # fmt: skip
                if outcome.deadletters:
                    producer = producer or EventProducer(self.settings)
                    self._publish_deadletters(producer, outcome.deadletters)
                commit = BatchCommit(
                    batch_id=outcome.batch_id, snapshot_id=outcome.snapshot_id,
                    person_keys={e.key for e in events if e.key}, person_ids=outcome.person_ids,
                    min_event_time=outcome.min_event_time, max_event_time=outcome.max_event_time,
                    events=len(events), rows_written=outcome.rows_written, rows_by_table=outcome.rows_by_table,
                    dead_letters=len(outcome.deadletters))  # fmt: skip
                self._run_hooks(commit)
                consumer.commit()
                summary.batches += 1
                if self.compact_every and summary.batches % self.compact_every == 0:
                    _compact(con)
                summary.events += len(events)
                summary.rows_written += outcome.rows_written
                summary.dead_letters += len(outcome.deadletters)
                idle_since = time.monotonic()
                log.info("batch %d: %d events, %d rows, %.0f ms", summary.batches, len(events),
                         outcome.rows_written, (time.monotonic() - t0) * 1000)  # fmt: skip
            summary.stopped_by = self._stop_reason
        except BaseException as err:
            status = "failed"
            summary.stopped_by = type(err).__name__
            raise
        finally:
            summary.seconds = time.monotonic() - started
            for closer in (
                consumer.close,
                *((producer.close,) if producer else ()),
            ):
                try:
                    closer()
                except Exception:
                    log.exception("closing failed")
            try:
                lineage.end_run(status, message=summary.stopped_by)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
                con.close()
        return summary

    def _poll_batch(self, consumer: Any) -> list[ConsumedEvent]:
        events: list[ConsumedEvent] = []
        deadline: float | None = None
        while len(events) < self.batch_size and not self._stop.is_set():
            wait = 200 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            got = consumer.poll(timeout_ms=wait, max_records=self.batch_size - len(events))
            if got:
                events.extend(got)
                if deadline is None:
                    deadline = time.monotonic() + self.max_wait_ms / 1000
            if deadline is None and not got:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        return events

    def _run_hooks(self, commit: BatchCommit) -> None:
        for hook in self.hooks:
            for attempt in range(self.hook_attempts):
                try:
                    hook(commit)
                    break
                except Exception as err:
                    if attempt == self.hook_attempts - 1:
                        raise HookFailed(
                            f"hook {getattr(hook, '__name__', hook)!r} failed {self.hook_attempts} "
                            f"times ({type(err).__name__}: {err}); offsets not committed"
                        ) from err
                    time.sleep(min(self.hook_backoff_s * 2**attempt, 10.0))

    def _publish_deadletters(self, producer: Any, deadletters: list[dict[str, Any]]) -> None:
        topic = self.settings.topic("deadletter")
        events = []
        for r in deadletters:
            src = r["src"]
            dl = DeadLetter(stage="transform", error_class=r.get("check") or "invalid_resource",
                            reason=r.get("reason") or "not mappable",
                            original_event_id=_uuid(src.get("event_id")),
                            details={"kafka": src.get("kafka_ref"), "resource_type": src.get("resource_type"),
                                     "resource_id": src.get("resource_id")})  # fmt: skip
            value = dl.model_dump(mode="json")
            events.append(Event(key=src.get("person_key"), value=value, headers=EventHeaders(
                event_id=uuid.uuid4(), event_type="deadletter.transform", source_system="careloop.transforms",
                site=self.settings.site, occurred_at=utcnow(), content_hash=content_hash(value))))  # fmt: skip
        producer.send_many(topic, events)


def _compact(con: Any) -> None:
    """Every commit writes new small Parquet files; merging them keeps scans (version lookups, analysts) fast."""
    try:
        con.execute("CALL ducklake_merge_adjacent_files('lake')")
    except Exception:
        log.warning("lake compaction skipped", exc_info=True)


def _assigned(consumer: Any) -> bool:
    inner = getattr(consumer, "_consumer", None)
    return inner is None or bool(inner.assignment())


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None
