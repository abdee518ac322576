"""Stream benchmark: FHIR resources/s from Kafka through Beam to committed OMOP lake rows, against the baseline of
consuming the same topic and only JSON-parsing it, in the same run; plus freshness (publish -> lake commit) at a
steady publish rate.

Load: the shared Synthea bundles' clinical resources replicated with new logical ids (and references rewritten),
so every copy is a new patient. The freshness load continues the copy numbering (new patients, each with its own
Patient resource) and is published from its own process at a steady rate, as an EHR feed would be. Default run
is short (20k resources, 10 s freshness); `--full` is 100k resources and 30 s of freshness at 1,000 events/s.

    .venv/bin/python benchmarks/stream.py [--full] [--resources N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import local_stack, percentile, write_result

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthea_resources() -> list[dict[str, Any]]:
    """Resources of the Synthea bundles with urn:uuid references made relative (as the gateway publishes them)."""
    out = []
    for f in sorted((SHARED / "fhir" / "synthea_r4_bundles").glob("*_*.json")):
        bundle = json.loads(f.read_text())
        entries = [e for e in bundle["entry"] if isinstance(e.get("resource"), dict)]
        text = json.dumps([e["resource"] for e in entries])
        for e in entries:
            text = text.replace(f'"{e["fullUrl"]}"', f'"{e["resource"]["resourceType"]}/{e["resource"]["id"]}"')
        out.extend(json.loads(text))
    return out


def replicate(base: list[dict[str, Any]], n: int, first_copy: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """n (person key, resource) pairs: copies of `base` with every id and reference suffixed per copy (numbered
    from `first_copy`, so that a later load is new patients, each with its own Patient resource)."""
    ids = {r["id"] for r in base}
    texts = [(r["resourceType"], json.dumps(r)) for r in base]
    out: list[tuple[str, dict[str, Any]]] = []
    copy = first_copy
    while len(out) < n:
        for _, text in texts:
            t = text
            for rid in ids & set(_ids_in(text)):
                t = t.replace(rid, f"{rid}-{copy}")
            r = json.loads(t)
            key = r["id"] if r["resourceType"] == "Patient" else _patient(r)
            out.append((key or "org", r))
            if len(out) >= n:
                break
        copy += 1
    return out


def _ids_in(text: str) -> list[str]:
    import re

    return re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text)


def _patient(r: dict[str, Any]) -> str | None:
    for f in ("subject", "patient"):
        ref = (r.get(f) or {}).get("reference", "")
        if ref.startswith("Patient/"):
            return ref[8:]
    return None


def events_for(pairs: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    from careloop.events import Event, EventHeaders, content_hash, utcnow

    return [Event(key=k, value=r, headers=EventHeaders(
        event_id=uuid.uuid4(), event_type=f"fhir.{r['resourceType']}.upsert", source_system="bench", site="bench",
        occurred_at=utcnow(), content_hash=content_hash(r))) for k, r in pairs]  # fmt: skip


class GcPauses:
    """Collector passes of this (the runner's) process longer than 20 ms: they hold the interpreter lock, so they
    show up directly in batch latencies."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif (d := time.perf_counter() - self._start) > 0.02:
            self.pauses.append(d)

    def summary(self) -> dict[str, Any]:
        return {"count": len(self.pauses), "total_s": round(sum(self.pauses), 3),
                "max_s": round(max(self.pauses, default=0.0), 3)}  # fmt: skip


def cpu_seconds(known: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user + system) so far of this process and each process under it, by role: where a steady
    stream's cores go (`known` names the pids this benchmark started itself)."""
    import psutil

    me = psutil.Process()
    out: dict[str, float] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            cmd = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        role = ("runner (poll + lake commit threads)" if proc.pid == me.pid else known.get(proc.pid)
                or ("broker (Tansu)" if "tansu" in cmd else "resource tracker" if "resource_tracker" in cmd
                    else "mapping worker (Beam)"))  # fmt: skip
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def publish_steady(settings: Any, base: list[dict[str, Any]], rate: float, n: int, first_copy: int,
                   conn: Any) -> None:  # fmt: skip
    """The freshness load, in its own process (as an EHR feed would be): `n` new resources at a steady `rate`.
    Sends "ready" once the events are built, waits for "go", then returns {event_id: publish time} — monotonic
    clock times, which are system-wide, so the parent can compare them with its own. In the runner's process the
    pre-built events (~500k Python objects) would only add garbage-collector work that no deployment has."""
    from careloop.kafka import EventProducer

    pairs = replicate(base, n, first_copy)
    events = events_for(pairs)
    published: dict[str, float] = {}
    with EventProducer(settings) as p:
        conn.send("ready")
        conn.recv()
        t_start = time.monotonic()
        for i, ev in enumerate(events):
            delay = t_start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            published[str(ev.headers.event_id)] = time.monotonic()
            p.send_async(settings.topic("fhir"), ev)
            if i % 200 == 0:
                p.flush()
        p.flush()
    conn.send(published)


def baseline(settings: Any, n: int) -> dict[str, float]:
    """Consume the topic with the same Kafka client and JSON-parse every value, nothing else."""
    import orjson

    from careloop.kafka import EventConsumer

    c = EventConsumer(settings, [settings.topic("fhir")], f"baseline-{uuid.uuid4().hex[:6]}")
    got, t0, first = 0, time.monotonic(), None
    while got < n and time.monotonic() - t0 < 300:
        recs = c.poll_raw(timeout_ms=500, max_records=10_000)
        if recs and first is None:
            first = time.monotonic()
        for r in recs:
            orjson.loads(r.value)
        got += len(recs)
    end = time.monotonic()
    c.close()
    return {"events": got, "seconds_incl_join": end - t0, "events_per_s": got / (end - (first or t0)),
            "client": "confluent-kafka (the stream's own client), raw poll + orjson.loads of each value"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="100k resources, 30 s freshness")
    ap.add_argument("--resources", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--freshness-seconds", type=float, default=None)
    ap.add_argument("--rate", type=float, default=1000.0, help="publish rate for the freshness phase (events/s)")
    ap.add_argument("--with-features", action="store_true",
                    help="run the feature store's stream hook too: freshness = publish -> online store updated "
                         "(issue 6); writes results/stream_features_<rate>.json")  # fmt: skip
    args = ap.parse_args()
    n = args.resources or (100_000 if args.full else 20_000)
    fresh_s = args.freshness_seconds or (30.0 if args.full else 10.0)

    from careloop.duck import connect
    from careloop.kafka import EventProducer
    from transforms import StreamRunner, load_vocabulary

    with local_stack("stream") as settings:
        con = connect(settings)
        load_vocabulary(con, SHARED / "omop" / "eunomia_synthea27nj")
        con.close()
        base = [r for r in synthea_resources() if r["resourceType"] not in ("Organization", "Practitioner")]
        pairs = replicate(base, n)
        events = events_for(pairs)
        t = time.monotonic()
        with EventProducer(settings) as p:
            for i in range(0, len(events), 5000):
                p.send_many(settings.topic("fhir"), events[i : i + 5000])
        publish_s = time.monotonic() - t
        del pairs, events  # the load lives in Kafka now; kept here, it would only slow the runner's collector
        print(f"published {n} resources in {publish_s:.1f} s", file=sys.stderr)

        base_res = baseline(settings, n)
        print(f"baseline consume+parse: {base_res['events_per_s']:.0f} events/s", file=sys.stderr)

        commits: list[float] = []
        runner = StreamRunner(settings, batch_size=args.batch_size, max_wait_ms=500,
                              on_batch_committed=[lambda c: commits.append(time.monotonic())])  # fmt: skip
        t0 = time.monotonic()
        first_events: list[float] = []
        orig_poll = StreamRunner._poll_batch

        def timed_poll(self: Any, *a: Any) -> Any:
            evs = orig_poll(self, *a)
            if evs and not first_events:
                first_events.append(time.monotonic())
            return evs

        StreamRunner._poll_batch = timed_poll  # type: ignore[method-assign]
        summary = runner.run(until_idle=5)
        StreamRunner._poll_batch = orig_poll  # type: ignore[method-assign]
        e2e_s = commits[-1] - first_events[0]
        con = connect(settings)
        rows = con.execute("SELECT sum(rows_written), sum(events) FROM omop.stream_status").fetchone()
        stats = con.execute("SELECT avg(batch_latency_ms), max(batch_latency_ms) FROM omop.stream_status").fetchone()
        con.close()
        e2e = {"events": summary.events, "rows_written": rows[0], "seconds": e2e_s,
               "events_per_s": summary.events / e2e_s, "batches": summary.batches,
               "seconds_incl_group_join": commits[-1] - t0, "batch_latency_ms_avg": stats[0],
               "map_workers": runner.map_workers}  # fmt: skip
        print(f"end to end: {e2e['events_per_s']:.0f} resources/s ({summary.batches} batches)", file=sys.stderr)

        # freshness: steady publish rate (from another process), small batches; latency = the batch's lake commit
        # (and, with --with-features, its feature push) - publish time of each of its events
        import multiprocessing

        n_fresh = int(args.rate * fresh_s)
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        first_copy = -(-n // len(base))  # after the throughput phase's copies: new patients, linked to their Patient
        publisher = ctx.Process(target=publish_steady, args=(settings, base, args.rate, n_fresh, first_copy,
                                                             child_conn))  # fmt: skip
        publisher.start()
        done_at: list[tuple[float, list[str]]] = []  # per batch: when its hooks finished, its event ids

        fresh_runner = StreamRunner(settings, batch_size=5000, max_wait_ms=200, group_id="fresh")
        batch_ids: dict[str, list[str]] = {}  # lake batch id -> event ids of that batch
        orig_after = StreamRunner._after_commit

        def spy_after(self: Any, flight: Any, outcome: Any, *a: Any, **kw: Any) -> Any:  # it starts the hooks
            batch_ids[outcome.batch_id] = [e.headers.get("event_id") for e in flight.events]
            return orig_after(self, flight, outcome, *a, **kw)

        StreamRunner._after_commit = spy_after  # type: ignore[method-assign]
        feature_hooks: list[Any] = []
        if args.with_features:  # the real push to Feast runs first (in its own process, as `careloop stream` runs it)
            from careloop.commands.stream import feature_hooks as make_feature_hooks

            feature_hooks = make_feature_hooks(settings, True)
            fresh_runner.hooks.extend(feature_hooks)
        worst: list[float] = []  # per batch, its oldest event's latency (in batch order)

        def probe(c: Any) -> None:
            done_at.append((time.monotonic(), batch_ids.pop(c.batch_id, [])))

        fresh_runner.hooks.append(probe)
        fresh_summary: list[Any] = []
        th = threading.Thread(target=lambda: fresh_summary.append(fresh_runner.run(until_idle=4)), daemon=True)
        # consume from the end: the fresh group starts at the earliest offset, so skip what the e2e phase published
        from careloop.kafka import EventConsumer

        pre = EventConsumer(settings, [settings.topic("fhir")], "fresh")
        got = 0
        while got < n:
            got += len(pre.poll(timeout_ms=1000, max_records=10_000))
        pre.commit()
        pre.close()
        import gc

        pauses = GcPauses()
        gc.callbacks.append(pauses)
        th.start()
        time.sleep(4)  # group join
        if conn.recv() != "ready":
            raise RuntimeError("the freshness publisher did not start")
        known = {publisher.pid: "publisher (load generator)",
                 **{h.pid: "feature hook" for h in feature_hooks if getattr(h, "pid", None)}}  # fmt: skip
        cpu0, wall0 = cpu_seconds(known), time.monotonic()
        conn.send("go")
        published: dict[str, float] = conn.recv()
        cpu1, wall = cpu_seconds(known), time.monotonic() - wall0
        cores = {role: round((cpu1[role] - cpu0.get(role, 0.0)) / wall, 2) for role in cpu1}
        publisher.join(30)
        th.join(timeout=120)
        gc.callbacks.remove(pauses)
        latencies: list[float] = []
        for t_done, ids in done_at:
            got = [t_done - published[eid] for eid in ids if eid in published]
            latencies.extend(got)
            worst.append(max(got, default=0.0))
        for hook in feature_hooks:
            hook.close()
        StreamRunner._after_commit = orig_after  # type: ignore[method-assign]
        fresh = {"rate_events_per_s": args.rate, "seconds": fresh_s, "events": n_fresh,
                 "measured": len(latencies), "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
                 "max_s": max(latencies) if latencies else None, "gc_pauses_over_20ms": pauses.summary(),
                 "cpu_cores_while_publishing": {**cores, "total": round(sum(cores.values()), 2)}}  # fmt: skip
        if fresh_summary:  # where a batch's time went (medians over the batches of this phase)
            tm = fresh_summary[0].timings
            fresh["batches"] = len(tm)
            fresh["per_batch"] = [{"worst_latency_s": round(w, 3), **{k: round(v) for k, v in t.items()}}
                                  for w, t in zip(worst, tm, strict=False)]  # fmt: skip
            for name, q in (("median", 0.5), ("p90", 0.9), ("max", 1.0)):
                fresh[f"batch_phase_{name}_ms"] = {k: percentile([t[k] for t in tm if k in t], q) for k in
                                                   (tm[0] if tm else {})}  # fmt: skip
        print(
            f"freshness at {args.rate:.0f}/s: p50 {fresh['p50_s']:.2f} s, p99 {fresh['p99_s']:.2f} s", file=sys.stderr
        )
        result = {
            "resources": n,
            "load": "Synthea bundle resources replicated with new ids (Organization/Practitioner excluded)",
            "publish_seconds": publish_s,
            "baseline_consume_parse": base_res,
            "end_to_end": e2e,
            "ratio_to_baseline": e2e["events_per_s"] / base_res["events_per_s"],
            "targets": {"end_to_end_events_per_s": 10_000, "ratio_to_baseline": 0.3, "freshness_p99_s": 3.0},
            "freshness": fresh,
            "batch_size": args.batch_size,
        }
        print(json.dumps(result, indent=2, default=str))
        if args.with_features:
            result["freshness_measures"] = "Kafka publish -> Beam -> lake commit -> Feast online+offline push done"
            result["targets"] = {"freshness_p99_s_at_200_per_s": 2.0}
        write_result(f"stream_features_{args.rate:.0f}" if args.with_features else "stream", result)


if __name__ == "__main__":
    main()
