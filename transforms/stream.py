"""The streaming runner: Kafka (`fhir`, `dicom`) -> Beam (in-process) -> OMOP lake, in micro-batches.

Order of effects per micro-batch, which is what makes a crash at any point safe:
  1. poll up to `batch_size` events (or until `max_wait_ms` passed since the first one — longer while earlier
     batches are still mapping or committing: each batch costs one lake commit, so batches grow to its pace);
  2. run `FhirToOmop` on Beam's in-process FnApiRunner — in a worker process (`transforms.map_pool`) when there is
     a second core, which also builds the commit's columnar form (`transforms.lake_writer.Prepared`);
  3. commit the lake transaction (rows, versions, DQ, lineage edges, status row) — idempotent on replay — in the
     lake-commit thread, so that the main thread polls batch N+2 while the worker maps N+1 and N commits;
  4. publish dead letters (at-least-once: a replayed batch may publish a dead letter twice);
  5. run the `on_batch_committed` hooks (retried with backoff; a hook that keeps failing stops the runner
     *before* the offsets are committed, so the batch is replayed after a restart) — in a hook thread, so that
     batch N's hooks (the feature push) run while batch N+1 is committed to the lake; hooks of consecutive
     batches never overlap, and each batch's offsets wait for its own hooks;
  6. commit the Kafka offsets of that batch.
Steps 3-6 stay strictly in batch order (one lake commit at a time; the main thread settles each finished commit
before the next starts), and offsets are committed per batch, explicitly, never past a batch not in the lake.
Kafka's source is consumed in Python because Beam's `ReadFromKafka` needs a Java expansion service (STACK.md);
a deployment with Java can run the same PTransforms behind Beam's own Kafka IO.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from careloop.duck import catalog_gate
from careloop.events import DeadLetter, Event, EventHeaders, content_hash, utcnow
from careloop.kafka import RawRecord
from careloop.memory import gc_paused
from careloop.settings import Settings

log = logging.getLogger(__name__)
GROUP_ID = "careloop-transforms"
MERGE_BATCHES = 2  # at most this many polled batches' worth of events in one lake commit (when they wait for it)


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
    timings: list[dict[str, float]] = field(default_factory=list)  # per committed batch, for operators/benchmarks

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class HookFailed(RuntimeError):
    """A batch hook kept failing: offsets were not committed, the batch will be replayed."""


def envelope_line(rec: RawRecord) -> bytes:
    """A consumed record as the framed line Beam reads (`transforms.pipeline.frame`): its value is not decoded here."""
    from transforms.pipeline import HEADER_FIELDS, frame

    h = rec.headers
    head = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset, "key": rec.key,
            "headers": {k: h.get(k) for k in HEADER_FIELDS}}  # fmt: skip
    return frame(head, rec.value)


@dataclass
class _InFlight:
    """A polled batch whose mapping runs (or ran) while earlier batches are committed."""

    events: list[RawRecord]
    started: float
    batch_dir: str
    future: Any = None  # Future of the mapped batch's files (worker process) ...
    results: Any = None  # ... or the mapped batch (`Prepared`), mapped in this process

    def ready(self) -> bool:
        return self.results is not None or (self.future is not None and self.future.done())

    def offsets(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for e in self.events:
            tp = (e.topic, e.partition)
            out[tp] = max(out.get(tp, 0), e.offset + 1)
        return out


class StreamRunner:
    """Consumes `fhir` + `dicom` and keeps the OMOP lake up to date; see the module docstring for the order."""

    def __init__(self, settings: Settings, *, batch_size: int = 5000, max_wait_ms: int = 250,
                 group_id: str = GROUP_ID, on_batch_committed: Sequence[Callable[[BatchCommit], None]] = (),
                 hook_attempts: int = 5, compact_every: int = 1, hook_backoff_s: float = 0.5, beam_runner: Any = None,
                 map_workers: int | None = None, install_signal_handlers: bool = False) -> None:  # fmt: skip
        from transforms.map_pool import default_workers

        self.settings = settings
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.group_id = group_id
        self.hooks = list(on_batch_committed)
        self.hook_attempts = hook_attempts
        self.compact_every = compact_every
        self.hook_backoff_s = hook_backoff_s
        self.beam_runner = beam_runner
        # a caller-supplied Beam runner object runs here (it need not be picklable); else map in worker processes
        self.map_workers = 0 if beam_runner is not None else (default_workers() if map_workers is None
                                                                else map_workers)  # fmt: skip
        self._stop = threading.Event()
        self._producer: Any = None
        self._pool: Any = None  # MappingPool while running
        self._vocab: Any = None
        self._hook_pool: ThreadPoolExecutor | None = None
        self._pending_hooks: Any = None
        self._written: set[str] = set()  # OMOP tables this runner wrote (compacted round robin)
        self._compact_queue: deque[tuple[str, str]] = deque()
        self._stop_reason = "idle"
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info("signal %s: finishing the batches in flight, then exiting", signum)
        self.stop(signal.Signals(signum).name)

    def stop(self, reason: str = "stopped") -> None:
        self._stop_reason = reason
        self._stop.set()

    # -- main loop --------------------------------------------------------------------------------------------------
    def run(self, *, until_idle: float | None = None, max_batches: int | None = None) -> StreamSummary:
        from careloop.duck import connect
        from careloop.kafka import EventConsumer
        from lineage import LineageWriter, ensure_schema
        from transforms.lake_writer import LakeWriter
        from transforms.map_pool import MappingPool
        from transforms.omop_schema import ensure_omop_schema
        from transforms.pipeline import read_prepared  # noqa: F401  (imports Beam now, not on the first batch)
        from transforms.vocab import Vocabulary

        con = connect(self.settings)
        # One DuckDB thread: a micro-batch commit is many small statements, where a second thread costs more than it
        # gives (measured: 200-event commits 0.18-0.24 s vs 0.29-0.39 s, 10k-event 0.7-0.8 s vs 1.1-1.2 s), and
        # the other core is busy mapping the next batch and running the hooks.
        con.execute("SET threads = 1")
        ensure_schema(con)
        ensure_omop_schema(con)
        vocab = Vocabulary.from_lake(con)
        if not len(vocab):
            log.warning("the vocabulary is empty: every code maps to concept 0 (run `careloop vocab load`)")
        self._vocab = vocab
        self._pool = MappingPool(vocab, self.map_workers) if self.map_workers else None
        # Imports and the vocabulary are permanent: the collector need not walk them again (as in the workers).
        gc.freeze()
        self._hook_pool = ThreadPoolExecutor(1, thread_name_prefix="careloop-hooks") if self.hooks else None
        commit_pool = ThreadPoolExecutor(1, thread_name_prefix="careloop-lake-commit")
        self._pending_hooks = None
        writer = LakeWriter(con)
        lineage = LineageWriter(self.settings, con=con, max_buffer=1 << 40)
        run_id = lineage.start_run(
            "transforms.stream",
            {"batch_size": self.batch_size, "max_wait_ms": self.max_wait_ms, "group": self.group_id,
             "map_workers": self.map_workers},
        )  # fmt: skip
        topics = [self.settings.topic("fhir"), self.settings.topic("dicom")]
        consumer = EventConsumer(self.settings, topics, self.group_id)
        self._producer = None
        workdir = str(self.settings.path("transforms", "work", f"{os.getpid()}-{uuid.uuid4().hex[:8]}"))
        summary = StreamSummary()
        started = time.monotonic()
        idle_since = time.monotonic()
        status = "succeeded"
        inflight: deque[_InFlight] = deque()
        depth = max(1, self.map_workers)  # batches mapping while the oldest one commits
        polled = 0
        committing: list[tuple[Any, list[_InFlight]]] = []  # the batch whose lake commit runs in the commit thread

        def settle_commit(block: bool) -> bool:
            """Steps 4-6 for the batch whose lake commit finished (in order: one lake commit at a time)."""
            if not committing or not (block or committing[0][0].done()):
                return False
            future, flights = committing.pop()
            outcome, timing = future.result()  # a failed lake commit stops the runner here, offsets uncommitted
            joined = flights[0] if len(flights) == 1 else _InFlight(
                events=[e for f in flights for e in f.events], started=flights[0].started, batch_dir="")  # fmt: skip
            with gc_paused():
                self._after_commit(joined, outcome, timing, consumer, summary)
            return True

        def commit_oldest() -> None:
            """Step 3 for the oldest batch, in the commit thread: the main thread meanwhile polls and frames the next
            batches (DuckDB releases the GIL while it writes). Batches behind it that are mapped already join it
            (up to `MERGE_BATCHES` x batch_size events): a backlog pays the commit's fixed cost once, not per batch."""
            settle_commit(block=True)
            flights = [inflight.popleft()]
            size = len(flights[0].events)
            while (
                inflight and inflight[0].ready() and size + len(inflight[0].events) <= MERGE_BATCHES * self.batch_size
            ):
                size += len(inflight[0].events)
                flights.append(inflight.popleft())
            seq = summary.batches
            committing.append((commit_pool.submit(self._commit_lake, flights, consumer.lag(), seq, writer, lineage,
                                                  run_id, con), flights))  # fmt: skip

        def pump() -> None:
            """Called between polls: settle a finished lake commit; start the next one once the oldest batch is
            mapped (so a commit never waits for the batch being polled to close)."""
            settle_commit(block=False)
            if not committing and inflight and inflight[0].ready():
                commit_oldest()

        def idle_pipeline() -> bool:
            """A partial batch closes at its `max_wait_ms` deadline only when nothing else is mapping or committing:
            while the pipeline is busy it keeps growing, because every batch costs one lake commit (~0.4 s fixed)
            and closing batches faster than they commit would only queue small commits (a steady stream would fall
            behind, and its freshness with it)."""
            return not committing and not inflight

        try:
            while not self._stop.is_set():
                if max_batches is not None and polled >= max_batches:
                    self._stop_reason = "max_batches"
                    break
                if self._pending_hooks is not None and self._pending_hooks[0].done():
                    self._settle_hooks(consumer)  # idle or between batches: commit the last batch's offsets now
                pump()
                with gc_paused():  # 10k polled records are ~50k young objects: no collector passes over them
                    events = self._poll_batch(consumer, pump if inflight or committing else None, idle_pipeline)
                if events:
                    polled += 1
                    with gc_paused():
                        inflight.append(self._start(events, os.path.join(workdir, f"b{polled}")))
                pump()
                if events or inflight or committing:
                    idle_since = time.monotonic()
                if len(inflight) > depth:  # enough is polled ahead: wait for the running lake commit
                    if committing:
                        settle_commit(block=True)
                    else:
                        commit_oldest()  # the commit thread waits for its mapping
                    continue
                if not events and not inflight and not committing:
                    if not consumer.assignment() and time.monotonic() - started < 60:
                        idle_since = time.monotonic()  # the group join is still running: not idle yet
                    elif until_idle is not None and time.monotonic() - idle_since >= until_idle:
                        self._stop_reason = "idle"
                        break
            while inflight:  # stopping (signal, idle, max_batches): what was polled is committed, in order
                commit_oldest()
            settle_commit(block=True)
            self._settle_hooks(consumer)
            summary.stopped_by = self._stop_reason
        except BaseException as err:
            status = "failed"
            summary.stopped_by = type(err).__name__
            raise
        finally:
            summary.seconds = time.monotonic() - started
            commit_pool.shutdown(wait=True)  # a lake commit still running ends before the connection closes
            if self._hook_pool is not None:  # a hook still running must not outlive the runner
                self._hook_pool.shutdown(wait=True)
            closers = [consumer.close, *((self._producer.close,) if self._producer else ()),
                       *((self._pool.close,) if self._pool else ())]  # fmt: skip
            for closer in closers:
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

    def _start(self, events: list[RawRecord], batch_dir: str) -> _InFlight:
        """Write the batch file and start mapping it (worker process), or map it here (no workers)."""
        from transforms.map_pool import COLUMNAR_CHUNK
        from transforms.pipeline import run_batch, write_batch

        flight = _InFlight(events=events, started=time.monotonic(), batch_dir=batch_dir)
        lines = [envelope_line(e) for e in events]
        if self._pool is None:
            flight.results = run_batch(lines, batch_dir, self._vocab, runner=self.beam_runner, columnar=True,
                                       chunk=COLUMNAR_CHUNK)  # fmt: skip
            return flight
        os.makedirs(batch_dir, exist_ok=True)
        path = os.path.join(batch_dir, "batch.jsonl")
        write_batch(lines, path)
        flight.future = self._pool.submit(path, os.path.join(batch_dir, "out"))
        return flight

    def _commit_lake(self, flights: list[_InFlight], lag: dict[tuple[str, int], int], seq: int, writer: Any,
                     lineage: Any, run_id: str, con: Any) -> tuple[Any, dict[str, float]]:  # fmt: skip
        """Step 3 of the module docstring for one or more consecutive mapped batches, as ONE lake transaction (runs
        in the commit thread), then one table's compaction; returns the outcome and the phase timings."""
        from transforms.lake_writer import concat_batches
        from transforms.pipeline import read_prepared

        events = [e for f in flights for e in f.events]
        t_map = time.monotonic()
        parts = []
        for flight in flights:
            try:
                parts.append(flight.results if flight.results is not None else read_prepared(flight.future.result()))
            finally:
                shutil.rmtree(flight.batch_dir, ignore_errors=True)
        results = concat_batches(parts)
        t_commit = time.monotonic()
        elapsed = t_commit - flights[0].started
        outcome = writer.commit(results, run_id=run_id, lineage=lineage, status={
            "batch_seq": seq, "mode": "stream", "events": len(events),
            "resources": results.size - len(results.deadletters),
            "batch_latency_ms": elapsed * 1000, "events_per_s": len(events) / elapsed if elapsed else None,
            "consumer_lag": sum(lag.values()),
            "lag_detail": orjson.dumps({f"{t}/{p}": n for (t, p), n in lag.items()}).decode()})  # fmt: skip
        timing = {"events": len(events), "batches": len(flights), "queued_ms": (t_map - flights[0].started) * 1000,
                  "map_wait_ms": (t_commit - t_map) * 1000,
                  "lake_commit_ms": (time.monotonic() - t_commit) * 1000}  # fmt: skip
        self._written.update(outcome.rows_by_table)
        if self.compact_every and (seq + 1) % self.compact_every == 0:
            t_compact = time.monotonic()
            self._compact_one(con)
            timing["compact_ms"] = (time.monotonic() - t_compact) * 1000
        return outcome, timing

    def _after_commit(self, flight: _InFlight, outcome: Any, timing: dict[str, float], consumer: Any,
                      summary: StreamSummary) -> None:  # fmt: skip
        """Steps 4-6 of the module docstring for a batch committed to the lake (main thread)."""
        events = flight.events
        if outcome.deadletters:
            self._publish_deadletters(outcome.deadletters)
        commit = BatchCommit(
            batch_id=outcome.batch_id, snapshot_id=outcome.snapshot_id,
            person_keys={e.key for e in events if e.key}, person_ids=outcome.person_ids,
            min_event_time=outcome.min_event_time, max_event_time=outcome.max_event_time,
            events=len(events), rows_written=outcome.rows_written, rows_by_table=outcome.rows_by_table,
            dead_letters=len(outcome.deadletters))  # fmt: skip
        summary.batches += 1
        summary.events += len(events)
        summary.rows_written += outcome.rows_written
        summary.dead_letters += len(outcome.deadletters)
        summary.timings.append(timing)
        log.info("batch %d: %d events, %d rows; waited %.0f ms for the previous commit, %.0f ms for mapping; lake "
                 "commit %.0f ms", summary.batches, len(events), outcome.rows_written, timing["queued_ms"],
                 timing["map_wait_ms"], timing["lake_commit_ms"])  # fmt: skip
        # the previous batch's hooks ran while this batch was committed; its offsets go first, then this batch's
        # hooks start (in their thread) and the next batch is committed meanwhile
        self._settle_hooks(consumer)
        if self._hook_pool is None:
            consumer.commit(flight.offsets())
        else:
            self._pending_hooks = (self._hook_pool.submit(self._timed_hooks, commit, timing), flight.offsets())

    def _compact_one(self, con: Any) -> None:
        """Merge the small files of ONE table per call, round robin over the tables the stream writes: no batch
        pays for compacting the whole lake (which stalled a steady stream for ~2 s every 20 batches)."""
        if not self._compact_queue:
            self._compact_queue.extend(sorted(set(BOOKKEEPING_TABLES) | {("omop", t) for t in self._written}))
        compact_table(con, *self._compact_queue.popleft())

    def _timed_hooks(self, commit: BatchCommit, timing: dict[str, float]) -> None:
        t = time.monotonic()
        try:
            for result in self._run_hooks(commit):  # a hook may report its own phases: `{"<phase>_s": seconds}`
                if isinstance(result, dict):
                    timing.update({f"hook_{k[:-2]}_ms": v * 1000 for k, v in result.items()
                                   if k.endswith("_s") and isinstance(v, float)})  # fmt: skip
        finally:
            timing["hooks_ms"] = (time.monotonic() - t) * 1000

    def _settle_hooks(self, consumer: Any) -> None:
        """Wait for the hooks of the last committed batch (re-raising `HookFailed`), then commit its offsets."""
        pending, self._pending_hooks = self._pending_hooks, None
        if pending is None:
            return
        future, offsets = pending
        future.result()
        consumer.commit(offsets)

    def _poll_batch(self, consumer: Any, pump: Callable[[], None] | None = None,
                    may_close: Callable[[], bool] | None = None) -> list[RawRecord]:  # fmt: skip
        """Up to `batch_size` events, waiting `max_wait_ms` after the first — longer while `may_close()` is false
        (the pipeline is busy). With batches in flight it polls in short steps and calls `pump()` between them
        (commits progress while this batch fills), returning empty-handed once everything in flight is done."""
        events: list[RawRecord] = []
        deadline: float | None = None
        while len(events) < self.batch_size and not self._stop.is_set():
            wait = 200 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if pump is not None:
                wait = min(wait, 20) if wait > 0 or deadline is None else 20  # past the deadline: held, keep polling
            got = consumer.poll_raw(timeout_ms=wait, max_records=self.batch_size - len(events))
            if got:
                events.extend(got)
                if deadline is None:
                    deadline = time.monotonic() + self.max_wait_ms / 1000
            if pump is not None:
                pump()
            closable = may_close is None or may_close()
            if deadline is None and not got and (pump is None or closable):
                break
            if deadline is not None and time.monotonic() >= deadline and closable:
                break
        return events

    def _run_hooks(self, commit: BatchCommit) -> list[Any]:
        results = []
        for hook in self.hooks:
            for attempt in range(self.hook_attempts):
                try:
                    results.append(hook(commit))
                    break
                except Exception as err:
                    if attempt == self.hook_attempts - 1:
                        raise HookFailed(
                            f"hook {getattr(hook, '__name__', hook)!r} failed {self.hook_attempts} "
                            f"times ({type(err).__name__}: {err}); offsets not committed"
                        ) from err
                    time.sleep(min(self.hook_backoff_s * 2**attempt, 10.0))
        return results

    def _publish_deadletters(self, deadletters: list[dict[str, Any]]) -> None:
        from careloop.kafka import EventProducer

        producer = self._producer = self._producer or EventProducer(self.settings)
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


BOOKKEEPING_TABLES = (("omop", "fhir_source_versions"), ("omop", "fhir_row_map"), ("omop", "observation_period"),
                      ("omop", "dq_flags"), ("omop", "dq_results"), ("omop", "stream_status"),
                      ("lineage", "edges"))  # fmt: skip


# Files at least this big are never merged again. Without a bound every merge rewrote the table's whole (merged)
# history, so a compaction's cost grew with the lake: a steady 200 events/s stream stalled ~1 s whenever the turn
# came to a big table (lineage edges, source versions). With it a merge costs at most a few MB of rewrite.
COMPACT_MAX_FILE_BYTES = 2 << 20


def compact_table(con: Any, schema: str, table: str) -> None:
    """Every commit writes a new small Parquet file per table it touches; merging them keeps scans (version
    lookups, the feature hook, analysts) fast."""
    try:
        with catalog_gate(con):  # a whole transaction of its own (see careloop.duck on the catalog gate)
            con.execute(f"CALL ducklake_merge_adjacent_files('lake', '{table}', schema => '{schema}', "
                        f"max_file_size => {COMPACT_MAX_FILE_BYTES})")  # fmt: skip
    except Exception:
        log.warning("lake compaction of %s.%s skipped", schema, table, exc_info=True)


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None
