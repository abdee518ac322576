"""`--publish`: deliver a simulation through the ingestion core in global delivery-time order, at a steady rate.

Global order over a population that is generated patient by patient needs an external sort: each patient's
deliveries are spooled (orjson lines) into weekly bucket files on disk, then each bucket is loaded, sorted and
submitted. Memory is bounded by one week of deliveries; each patient is generated once. DICOM bytes are rendered
only when submitted.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import Field

from careloop.settings import Settings
from ingestion.simulator.dicom import render_dicom
from ingestion.simulator.generate import DicomStudy, iso
from ingestion.simulator.model import SimulationConfig
from ingestion.simulator.writer import SimulationSummary, TruthWriter, iter_records

ProgressFn = Callable[[int, int | None, str], None]
BUCKET_DAYS = 7


class PublishSummary(SimulationSummary):
    submitted: int = 0
    outcomes: dict[str, int] = Field(default_factory=dict)  # status -> count
    duplicates_sent: int = 0  # deliveries the simulator sent twice on purpose
    rejected_reasons: dict[str, int] = Field(default_factory=dict)
    truth_dir: str = ""


def _dicom_to_json(spec: DicomStudy) -> dict[str, Any]:
    d = dict(vars(spec))
    d["when"], d["birth_date"] = spec.when.isoformat(), spec.birth_date.isoformat()
    return d


def _dicom_from_json(d: dict[str, Any]) -> DicomStudy:
    d = dict(d)
    d["when"], d["birth_date"] = datetime.fromisoformat(d["when"]), date.fromisoformat(d["birth_date"])
    return DicomStudy(**d)


class _Spool:
    """Weekly bucket files of delivery lines: the external sort behind global delivery-time order."""

    def __init__(self, root: Path, origin: date) -> None:
        self.root, self.origin = root, datetime.combine(origin, datetime.min.time(), UTC)
        self.files: dict[int, IO[bytes]] = {}
        self.stack = ExitStack()

    def bucket(self, t: datetime) -> int:
        return max(0, (t - self.origin).days // BUCKET_DAYS)

    def add(self, line: dict[str, Any], t: datetime) -> None:
        b = self.bucket(t)
        f = self.files.get(b)
        if f is None:
            f = self.files[b] = self.stack.enter_context(open(self.root / f"{b:06d}.ndjson", "ab"))  # noqa: SIM115
        f.write(orjson.dumps(line) + b"\n")

    def buckets(self) -> list[Path]:
        self.stack.close()
        return [self.root / f"{b:06d}.ndjson" for b in sorted(self.files)]


class Pacer:
    """Keeps submissions at a steady `rate` per second from `start`: after the n-th delivery it sleeps until
    `start + n / rate`, and not at all when behind schedule (a gateway slower than the rate just runs flat out).
    `rate <= 0` means as fast as possible. The clock is injectable so the pacing is tested without timing."""

    def __init__(self, rate: float, start: float, *, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.rate, self.start, self.clock, self.sleep = rate, start, clock, sleep

    def wait(self, sent: int) -> None:
        if self.rate > 0:
            ahead = self.start + sent / self.rate - self.clock()
            if ahead > 0:
                self.sleep(ahead)


def publish_simulation(
    config: SimulationConfig,
    *,
    settings: Settings | None = None,
    rate: float = 0.0,
    truth_dir: Path | None = None,
    on_progress: ProgressFn | None = None,
) -> PublishSummary:
    """Generate, spool, sort and submit every delivery through `ingestion.Ingestor` (one per site)."""
    from careloop.settings import load_settings
    from ingestion import Ingestor

    settings = settings or load_settings()
    t0 = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    truth_root = Path(truth_dir) if truth_dir else settings.path("simulator", f"seed{config.seed}-{stamp}")
    summary = PublishSummary(truth_dir=str(truth_root / "truth"))
    truth = TruthWriter(truth_root, config)
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="careloop-sim-spool-", dir=settings.path("simulator")) as tmp:
        spool = _Spool(Path(tmp), config.start)
        try:
            for rec in iter_records(config):
                for d in rec.deliveries:
                    line = {"t": iso(d.delivered_at), "p": rec.truth.index, "s": d.seq, "a": d.action,
                            "site": rec.truth.site, "rt": d.resource_type, "id": d.logical_id,
                            "dup": "duplicate" in d.tags}  # fmt: skip
                    if d.resource is not None:
                        line["r"] = d.resource
                    if d.dicom is not None:
                        line["d"] = _dicom_to_json(d.dicom)
                    spool.add(line, d.delivered_at)
                truth.add(rec)
                summary.add(rec)
                if on_progress:
                    on_progress(rec.truth.index + 1, None, f"generating {rec.truth.index + 1:,}/{config.patients:,}")
        finally:
            buckets = spool.buckets()
        total = summary.resources + summary.deletes + summary.dicom_files
        sent = 0
        pacer = Pacer(rate, time.perf_counter())
        with ExitStack() as stack:
            ingestors: dict[str, Any] = {}
            for path in buckets:
                rows = [orjson.loads(x) for x in path.read_bytes().splitlines()]
                path.unlink()
                rows.sort(key=lambda r: (r["t"], r["p"], r["s"]))
                for r in rows:
                    ing = ingestors.get(r["site"])
                    if ing is None:
                        ing = ingestors[r["site"]] = stack.enter_context(
                            Ingestor(settings, source_system="simulator", site=r["site"], ack_each_call=False)
                        )
                    if r["a"] == "upsert":
                        outcome = ing.submit_resource(r["r"])
                    elif r["a"] == "delete":
                        outcome = ing.submit_delete(r["rt"], r["id"])
                    else:
                        outcome = ing.submit_dicom(render_dicom(_dicom_from_json(r["d"])))
                    outcomes[outcome.status] += 1
                    summary.duplicates_sent += int(r["dup"])
                    if outcome.status == "rejected":
                        reasons[(outcome.reason or "")[:120]] += 1
                    sent += 1
                    pacer.wait(sent)
                    if on_progress and (sent % 200 == 0 or sent == total):
                        on_progress(sent, total, f"{dict(outcomes)}")
                del rows
            for ing in ingestors.values():
                ing.flush()
    summary.submitted = sent
    summary.outcomes = dict(sorted(outcomes.items()))
    summary.rejected_reasons = dict(reasons.most_common(10))
    summary.seconds = round(time.perf_counter() - t0, 3)
    truth.close(summary)
    return summary
