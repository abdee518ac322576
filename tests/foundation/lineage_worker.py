"""A separate process writing lineage in batches (used by the concurrency test)."""

from __future__ import annotations

import sys

from careloop.settings import load_settings
from lineage import IngestRecord, LineageWriter


def main(home: str, name: str, batches: int, per_batch: int) -> None:
    writer = LineageWriter(load_settings(home=home))
    writer.start_run(f"writer-{name}")
    for b in range(batches):
        for i in range(per_batch):
            writer.edge("kafka", f"{name}/{b}/{i}", "fhir", f"Observation/{name}-{b}-{i}/_history/1", "published_as")
        writer.ingest_event(IngestRecord(event_id=f"{name}-{b}", status="accepted"))
        writer.flush()
    writer.end_run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
