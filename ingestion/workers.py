"""Worker processes for large inputs: a chunk of a Bundle/NDJSON goes in as bytes, compact results come back.

Validation and de-identification are ~80% of the ingestion CPU and need no shared state, so they run in persistent
processes (started once per Ingestor, on first large input): parse + R4B validation + de-identification + content
hash + vault encryption of the original. The main process keeps what needs shared state: the seen-store, the identity
index, Kafka and lineage. A resource that needs the identity index (a Patient without id, a subject given only by
identifier, a conditional reference) comes back as `MAIN` and the main process handles it in-process, so results are
identical to the in-process path.

The pool uses the `forkserver` context: workers are forked from a clean server process that has already imported
the common R4B model classes (no fork of a process that runs Kafka or DuckDB threads; no per-worker import cost).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import orjson

from careloop.memory import gc_paused
from ingestion.fhir_deid import FhirDeidOptions, RefIndex, needs_main
from ingestion.fhir_item import Accepted, Env, NeedsMain, Rejected, process_resource, validate_all

# The resource types of Synthea and most EHR feeds: imported once in the fork server, so every worker has them.
COMMON_TYPES = (
    "Patient", "Encounter", "Observation", "Condition", "Procedure", "MedicationRequest", "Immunization",
    "DiagnosticReport", "Claim", "ExplanationOfBenefit", "CarePlan", "CareTeam", "Organization", "Practitioner",
    "PractitionerRole", "Location", "AllergyIntolerance", "Device", "ImagingStudy", "DocumentReference", "Provenance",
    "Medication", "MedicationAdministration", "SupplyDelivery", "Goal",
)  # fmt: skip
MAIN = ("main",)
Result = tuple[Any, ...]
_env: Env | None = None
_vault: Any = None
_dicom: Any = None  # DicomDeidOptions, made on the first DICOM chunk
_settings: Any = None


def preload() -> None:
    """Import the common model classes (run in the fork server, inherited by every worker)."""
    from ingestion.fhir_schema import fields_of, model_class

    for name in COMMON_TYPES:
        model_class(name)
        fields_of(name)


def _init(pseudo_key: bytes, max_shift_days: int, vault_key: bytes, vault_path: str, options: tuple[bool, bool, bool],
          max_message_bytes: int, settings: Any = None) -> None:  # fmt: skip
    global _env, _vault, _settings
    _settings = settings
    from pathlib import Path

    from ingestion.core import CachingPseudonymizer
    from ingestion.vault import RawVault

    pseudo = CachingPseudonymizer(pseudo_key, max_shift_days=max_shift_days)
    _env = Env(pseudo, FhirDeidOptions(*options), max_message_bytes)
    _vault = RawVault(None, vault_key, path=Path(vault_path))
    # Validation builds hundreds of thousands of short-lived pydantic objects per chunk; without a collector run
    # over them mid-chunk (and with the imported modules frozen out of its view) a chunk costs less CPU. Nothing in
    # a chunk needs cycles freed before it ends.
    gc.freeze()


def process_chunk(payload: bytes) -> list[Result]:
    """Cyclic GC is paused for the chunk (`careloop.memory.gc_paused`)."""
    with gc_paused():
        return _process_chunk(payload)


def _process_chunk(payload: bytes) -> list[Result]:
    """payload: JSON {"urls": {fullUrl: [type, id]}, "persons": {hash: person}, "items": [[event_id, digest,
    fullUrl, resource, original text or null], ...]} -> per item ("ok", ...), ("rej", ...) or MAIN.

    The originals are written to the vault here (one durable commit per chunk, before the results go back), so the
    main process publishes only what is already in the vault."""
    assert _env is not None
    doc = orjson.loads(payload)
    refs = RefIndex({k: (v[0], v[1]) for k, v in doc["urls"].items()}, doc["persons"], conditional=needs_main)
    items = doc["items"]
    checks = validate_all([it[3] for it in items])
    out: list[Result] = []
    for (event_id, digest, full_url, resource, original), check in zip(items, checks, strict=True):
        try:
            r = process_resource(resource, digest, full_url, refs, _env, validated=check)
        except NeedsMain:
            out.append(MAIN)
            continue
        except Exception:  # an unexpected bug: let the main process run (and report) it
            out.append(MAIN)
            continue
        sealed = _vault.put(event_id, original.encode() if original is not None else orjson.dumps(resource))
        if isinstance(r, Accepted):
            out.append(
                (
                    "ok",
                    r.rtype,
                    r.pid,
                    r.person,
                    r.value,
                    r.occurred_at,
                    r.content_hash,
                    r.identifiers,
                    sealed,
                    r.ident_hashes,
                )
            )
        else:
            assert isinstance(r, Rejected)
            out.append(("rej", r.error_class, r.reason, r.http_status, r.stage, r.rtype, r.pid, sealed))
    _vault.flush()
    return out


class _NeedsMain(Exception):
    """The file's patient is not the one the main process resolved in advance: the main process redoes it."""


def process_dicom_chunk(files: list[tuple[str, bytes, str | None, str | None, str | None]]) -> list[Result]:
    """files: [(event_id, data, patient_id, issuer, person)], the patient as the main process read it (`peek_patient`)
    and the person it resolved for it (None: unknown) -> per file ("ok", ...), ("rej", ...) or MAIN.

    The original goes to the vault here (durable before the results go back); the de-identified file goes back to
    the main process, which stores it only once the person is confirmed (no orphan objects). The main process
    replays the person resolution (its side effects on the identity index) with the patient keys returned in
    `called`, exactly where the in-process path would have made it."""
    global _dicom
    assert _env is not None and _settings is not None
    from ingestion.dicom import DicomDeidOptions, DicomRejected, deidentify_dicom, dicom_event_value

    if _dicom is None:
        _dicom = DicomDeidOptions(retain_modified_dates=_settings.deid_shift_dates)
    options = _dicom
    out: list[Result] = []
    for event_id, data, patient_id, issuer, person in files:
        called: list[tuple[str | None, str | None]] = []

        def resolve(pid: str | None, issuer: str | None = None, _hint: Any = (patient_id, issuer, person),
                    _called: list[Any] = called) -> str:  # fmt: skip
            if _hint[2] is None or (pid, issuer) != (_hint[0], _hint[1]):
                raise _NeedsMain
            _called.append((pid, issuer))
            return _hint[2]

        try:
            result = deidentify_dicom(data, _env.pseudo, resolve, options)
        except _NeedsMain:
            out.append(MAIN)
            continue
        except DicomRejected as err:
            sealed = _vault.put(event_id, data)
            out.append(("rej", err.error_class, err.reason, err.sop_class_uid, err.failure_reason,
                        called[0] if called else None, sealed))  # fmt: skip
            continue
        except Exception:  # an unexpected bug: let the main process run (and report) it
            out.append(MAIN)
            continue
        value = dicom_event_value(result, "")  # the main process stores the file and sets the uri
        sealed = _vault.put(event_id, data)
        out.append(("ok", value, result.person, result.sop_instance_uid, result.sop_class_uid, result.occurred_at,
                    result.dataset_bytes, called[0] if called else None, sealed))  # fmt: skip
    _vault.flush()
    return out


class WorkerPool:
    """`submit(urls, persons, items)` -> futures of result lists, one per chunk; `close()` stops the workers."""

    def __init__(self, workers: int, *, pseudo_key: bytes, max_shift_days: int, vault_key: bytes, vault_path: str,
                 options: FhirDeidOptions, max_message_bytes: int, settings: Any = None) -> None:  # fmt: skip
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["ingestion.workers_preload"])
        self.workers = workers
        self._pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init,
            initargs=(pseudo_key, max_shift_days, vault_key, vault_path,
                      (options.shift_dates, options.keep_zip3, options.keep_state), max_message_bytes, settings),
        )  # fmt: skip
        with _main_module_hidden():  # start every worker now, without re-running the caller's __main__ in it
            futs = [self._pool.submit(os.getpid) for _ in range(workers)]
            for f in futs:
                f.result()

    def submit(self, urls: dict[str, tuple[str, str]], persons: dict[str, str],
               items: list[tuple[str, str, Any, Any, str | None]]) -> list[tuple[Future[Any], int]]:  # fmt: skip
        """Split `items` in one chunk per worker; (future, size) per chunk. Raises TypeError/JSONEncodeError when a
        resource cannot be serialized (the caller then processes in-process)."""
        n = len(items)
        size = -(-n // self.workers)
        out = []
        for start in range(0, n, size):
            chunk = items[start : start + size]
            payload = orjson.dumps({"urls": urls, "persons": persons, "items": chunk})
            out.append((self._pool.submit(process_chunk, payload), len(chunk)))
        return out

    def submit_dicom(
        self, files: list[tuple[str, bytes, str | None, str | None, str | None]]
    ) -> list[tuple[Future[Any], int]]:
        """DICOM files in small chunks (a file is ~10-40 ms of work): two chunks per worker so none idles at the end."""
        n = len(files)
        size = max(1, -(-n // (2 * self.workers)))
        return [(self._pool.submit(process_dicom_chunk, files[s : s + size]), len(files[s : s + size]))
                for s in range(0, n, size)]  # fmt: skip

    def warm_up(self) -> None:
        """Wait until every worker is up (they start with the pool)."""
        for f in [self._pool.submit(os.getpid) for _ in range(self.workers)]:
            f.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Workers need nothing from `__main__`; without this, multiprocessing re-imports the caller's script (or
    notebook) in every worker, which runs an unguarded script's top level again."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    if main is not None and "__spec__" in saved:
        main.__spec__ = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def default_workers(configured: int | None) -> int:
    if configured is not None:
        return configured
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
