"""Asynchronous `$import` (the FHIR Bulk Data async pattern): the NDJSON body is spooled to a 0600 temp file (never
held whole in memory), a background thread ingests it line by line through the source's Ingestor, and a status
endpoint reports progress (202 + X-Progress), then a PHI-free manifest (200): counts by status and dead-letter
reasons. DELETE cancels (between batches) and forgets the job.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from careloop.events import utcnow
from careloop.settings import Settings

BATCH = 500
READ_CHUNK = 1 << 20


class LineTooLong(Exception):
    pass


class ImportJob:
    """One spooled `$import` upload and its progress."""

    def __init__(self, source: str, path: Path, size: int, line_limit: int) -> None:
        self.id = uuid.uuid4().hex
        self.source = source
        self.path = path
        self.size = size
        self.line_limit = line_limit
        self.started = utcnow()
        self.status = "in-progress"  # -> completed | cancelled | failed
        self.error: str | None = None
        self.lines = 0
        self.bytes_done = 0
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[tuple[str, str]] = Counter()
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None
        self.finished: str | None = None

    def progress(self) -> str:
        pct = 100.0 * self.bytes_done / self.size if self.size else 100.0
        return f"{pct:.0f}% ({self.lines} lines)"

    def manifest(self, request_url: str) -> dict[str, Any]:
        """PHI-free: counts and reasons only (reasons never quote payload values)."""
        out: dict[str, Any] = {
            "transactionTime": self.started.isoformat(),
            "request": request_url,
            "status": self.status,
            "lines": self.lines,
            "counts": {k: self.counts.get(k, 0) for k in ("accepted", "duplicate", "rejected")},
            "deadLetterReasons": [
                {"errorClass": c, "reason": r, "count": n} for (c, r), n in self.reasons.most_common()
            ],
            "finishedAt": self.finished,
        }
        if self.error:
            out["error"] = self.error
        return out

    def _lines(self) -> Iterator[bytes]:
        """The spooled lines with bounded memory; a line over the limit ends the job (as the synchronous form)."""
        with self.path.open("rb") as fh:
            while True:
                line = fh.readline(self.line_limit + 1)
                if not line:
                    return
                self.bytes_done += len(line)
                if len(line) > self.line_limit and not line.endswith(b"\n"):
                    raise LineTooLong(f"NDJSON line {self.lines + 1} exceeds the limit of {self.line_limit} bytes "
                                      "(earlier lines were ingested)")  # fmt: skip
                self.lines += 1
                yield line

    def run(self, ingestor: Any) -> None:
        """Ingest the spooled lines; the status changes last (after the spool file is gone and every count is
        final), so a poller that sees a final status sees the final manifest."""
        status, error = "completed", None
        batch: list[bytes] = []
        try:
            try:
                for line in self._lines():
                    if line.strip():
                        batch.append(line)
                    if len(batch) >= BATCH:
                        self._submit(ingestor, batch)
                        batch = []
                    if self.cancel.is_set():
                        status, batch = "cancelled", []
                        break
            except LineTooLong as err:
                status, error = "failed", str(err)
            if batch:
                self._submit(ingestor, batch)
            ingestor.flush()
        except Exception as err:  # broker down etc.: reported, never a silent stop
            status, error = "failed", f"{type(err).__name__}: {err}"[:300]
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.finished = utcnow().isoformat()
            self.error = error
            self.status = status

    def _submit(self, ingestor: Any, batch: list[bytes]) -> None:
        for o in ingestor.submit_ndjson(batch, batch_size=len(batch)):
            self.counts[o.status] += 1
            if o.status == "rejected":
                self.reasons[(o.error_class or "Rejected", (o.reason or "")[:200])] += 1


class ImportJobs:
    """The gateway's async `$import` jobs (in memory: a restarted gateway forgets them; the outcomes are in lineage)."""

    def __init__(self, settings: Settings) -> None:
        self.folder = settings.path("ingest", "import-spool")
        self.folder.chmod(0o700)
        self.line_limit = settings.gateway_max_line_bytes
        self._jobs: dict[str, ImportJob] = {}
        self._lock = threading.Lock()

    def spool_file(self) -> tuple[Any, Path]:
        fd, name = tempfile.mkstemp(prefix="import-", suffix=".ndjson", dir=self.folder)
        os.chmod(name, 0o600)
        return os.fdopen(fd, "wb"), Path(name)

    def start(self, source: str, path: Path, size: int, ingestor: Any) -> ImportJob:
        job = ImportJob(source, path, size, self.line_limit)
        job.thread = threading.Thread(target=job.run, args=(ingestor,), name=f"import-{job.id[:8]}", daemon=True)
        with self._lock:
            self._jobs[job.id] = job
        job.thread.start()
        return job

    def get(self, source: str, job_id: str) -> ImportJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.source == source else None

    def delete(self, source: str, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.source != source:
                return False
            del self._jobs[job_id]
        job.cancel.set()
        return True

    def close(self) -> None:
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.cancel.set()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout=60)
