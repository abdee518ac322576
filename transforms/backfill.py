"""`careloop backfill PATH...`: the stream's transforms as a bounded Beam pipeline over FHIR files.

Files go through the same ingestion validation and de-identification as live traffic (`ingestion.Ingestor` with
publish=False), never around it. The de-identified events are written as JSON-lines envelopes, read by Beam's
`ReadFromText` and mapped by the per-element `FhirToOmop` (so a distributed runner can split the work), with the
runner taken from the pipeline options (`--runner FlinkRunner ...`; default: the in-process FnApiRunner). The
results are committed to the lake by the same writer as the stream, in transactions of `commit_size` events.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from careloop.errors import CareloopError
from careloop.settings import Settings


@dataclass
class BackfillReport:
    files: int = 0
    events: int = 0
    rejected: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    skipped: int = 0
    stale: int = 0
    seconds: float = 0.0
    rows_by_table: dict[str, int] = field(default_factory=dict)


def _inputs(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(x for x in p.rglob("*") if x.suffix in (".json", ".ndjson", ".jsonl")))
        elif p.is_file():
            files.append(p)
        else:
            raise CareloopError(f"backfill input {p} does not exist")
    if not files:
        raise CareloopError("no FHIR files (.json, .ndjson) in the given paths")
    return files


def _envelope(ev: Any, index: int) -> dict[str, Any]:
    h = ev.headers
    return {"topic": None, "partition": 0, "offset": index, "key": ev.key,
            "headers": {"event_id": str(h.event_id), "event_type": h.event_type, "content_hash": h.content_hash,
                        "occurred_at": h.occurred_at.isoformat()}, "value": ev.value}  # fmt: skip


def backfill(settings: Settings, paths: Sequence[str | Path], *, pipeline_args: Sequence[str] = (),
             source_system: str = "backfill", commit_size: int = 20_000) -> BackfillReport:  # fmt: skip
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from careloop.duck import connect
    from ingestion import Ingestor
    from lineage import LineageWriter, ensure_schema
    from transforms.lake_writer import LakeWriter
    from transforms.omop_schema import ensure_omop_schema
    from transforms.pipeline import local_runner, run_files
    from transforms.vocab import Vocabulary

    t0 = time.monotonic()
    report = BackfillReport()
    files = _inputs(paths)
    work = settings.path("transforms", "backfill", uuid.uuid4().hex[:12])
    envelopes = work / "events.jsonl"
    n = 0
    with Ingestor(settings, source_system=source_system, publish=False) as ing, open(envelopes, "wb") as fh:
        for f in files:
            report.files += 1
            data = f.read_bytes()
            if f.suffix in (".ndjson", ".jsonl"):
                outcomes = list(ing.submit_ndjson(data.splitlines()))
            else:
                doc = orjson.loads(data)
                outcomes = ing.submit_bundle(doc) if doc.get("resourceType") == "Bundle" else [ing.submit_resource(doc)]
            report.rejected += sum(1 for o in outcomes if getattr(o, "status", "") == "rejected")
            for ev in ing.drain():
                fh.write(orjson.dumps(_envelope(ev, n), default=str))
                fh.write(b"\n")
                n += 1
    report.events = n
    options = PipelineOptions([*pipeline_args, "--no_pipeline_type_check"])
    runner = None if options.view_as(StandardOptions).runner else local_runner()
    con = connect(settings)
    ensure_schema(con)
    ensure_omop_schema(con)
    vocab = Vocabulary.from_lake(con)
    lineage = LineageWriter(settings, con=con, max_buffer=1 << 40)
    run_id = lineage.start_run("transforms.backfill", {"files": [str(f) for f in files][:100],
                                                       "pipeline_args": list(pipeline_args)})  # fmt: skip
    status = "failed"
    try:
        results = run_files(str(envelopes), str(work / "out"), vocab, runner=runner, options=options) if n else []
        writer = LakeWriter(con)
        results.sort(key=lambda r: r["src"]["seq"][1])
        for i in range(0, len(results), commit_size):
            part = results[i : i + commit_size]
            out = writer.commit(part, run_id=run_id, lineage=lineage, status={
                "batch_seq": i // commit_size, "mode": "backfill", "events": len(part),
                "resources": sum(1 for r in part if r["status"] != "deadletter")})  # fmt: skip
            report.rows_written += out.rows_written
            report.dead_letters += len(out.deadletters)
            report.skipped += out.skipped
            report.stale += out.stale
            for t, k in out.rows_by_table.items():
                report.rows_by_table[t] = report.rows_by_table.get(t, 0) + k
        status = "succeeded"
    finally:
        lineage.end_run(status)
        con.close()
        shutil.rmtree(work, ignore_errors=True)
        for stray in glob.glob(os.path.join(str(work), "*")):
            os.unlink(stray)
    report.seconds = time.monotonic() - t0
    return report
