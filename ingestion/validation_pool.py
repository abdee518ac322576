"""Optional parallel R4B validation: validation is ~70% of the ingestion CPU, so `careloop publish --workers N`
validates chunks of a Bundle in N spawned processes while the main process de-identifies and publishes the chunks
already validated. Results are identical to in-process validation (same function, same reasons)."""

from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import orjson

from ingestion.fhir_validate import Rejection, resource_type_of, validate_resource

CHUNK = 64
Result = tuple[str, str, int] | None  # (error_class, reason, http_status) or None when valid


def validate_chunk(payload: bytes) -> list[Result]:
    out: list[Result] = []
    for r in orjson.loads(payload):
        try:
            validate_resource(r, resource_type_of(r))
            out.append(None)
        except Rejection as rej:
            out.append((rej.error_class, rej.reason, rej.http_status))
    return out


class ValidationPool:
    def __init__(self, workers: int) -> None:
        import multiprocessing

        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, resources: list[dict[str, Any]]) -> dict[int, tuple[Future[list[Result]], int]]:
        """id(resource) -> (future of its chunk, index in the chunk); resources that cannot be sent are left out."""
        pending: dict[int, tuple[Future[list[Result]], int]] = {}
        for start in range(0, len(resources), CHUNK):
            chunk = resources[start : start + CHUNK]
            try:
                payload = orjson.dumps(chunk)
            except (TypeError, orjson.JSONEncodeError):
                continue  # validated in-process instead
            fut = self._pool.submit(validate_chunk, payload)
            for i, r in enumerate(chunk):
                pending[id(r)] = (fut, i)
        return pending

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
