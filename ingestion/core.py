"""The one ingestion core behind the gateway, `careloop publish`, the simulator and `careloop backfill`.

Per input: parse -> validate the *original* once (R4B model + careloop's own rules) -> find the person ->
de-identify the plain JSON -> then, per batch: drop what the seen-store already has, encrypt every original into
the vault (durable before anything is published), publish (Kafka waits for acks once per batch), mark seen, index
patient identifiers, buffer lineage. Rejections become dead letters with a PHI-free reason.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from careloop.errors import BrokerError
from careloop.events import SCHEMA_VERSION, DeadLetter, Event, EventHeaders, content_hash, event_id_for, utcnow
from careloop.settings import Settings
from ingestion.fhir_deid import PSEUDONYMOUS, FhirDeidOptions, RefIndex, pseudo_id, shift_date_text
from ingestion.fhir_item import Accepted, Env, Rejected, process_resource, urn_id, validate_all
from ingestion.fhir_validate import Rejection, parse_json, resource_type_of
from ingestion.pseudonym import Pseudonymizer
from ingestion.state import IngestState
from ingestion.vault import RawVault

BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "searchset", "history", "document", "message"})
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
LINEAGE_FLUSH_S = 30.0
MIN_POOL_INPUT = 64  # fewer new resources than this are processed in-process (worker round trip not worth it)
SETTLE_EVERY = 5000  # without ack_each_call: wait for acks at the latest after this many events


class CachingPseudonymizer(Pseudonymizer):
    """Memoizes the HMACs: a bundle references the same Patient, Practitioner and Organization hundreds of times."""

    def __init__(self, key: bytes, *, max_shift_days: int = 365) -> None:
        super().__init__(key, max_shift_days=max_shift_days)
        self.person = lru_cache(maxsize=65536)(super().person)  # type: ignore[method-assign]
        self.resource_id = lru_cache(maxsize=262144)(super().resource_id)  # type: ignore[method-assign]
        self.identifier = lru_cache(maxsize=65536)(super().identifier)  # type: ignore[method-assign]
        self.date_shift_days = lru_cache(maxsize=65536)(super().date_shift_days)  # type: ignore[method-assign]


class Outcome(BaseModel):
    """What happened to one input (resource, delete or DICOM file); safe to return to the caller."""

    status: Literal["accepted", "duplicate", "rejected"]
    event_id: str
    resource_type: str | None = None
    resource_id: str | None = None  # pseudonymous
    person: str | None = None
    reason: str | None = None
    error_class: str | None = None
    http_status: int = 201
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass
class _Item:
    outcome: Outcome
    topic: str  # logical topic: fhir, dicom or deadletter
    event: Event | None = None
    raw: bytes | None = None
    stage: str | None = None
    event_type: str | None = None
    identifiers: list[tuple[str, str]] = field(default_factory=list)
    resource_key: str | None = None
    vault_ref: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # STOW details (SOP class, failure reason)
    sealed: str | None = None  # vault reference of an original a worker already wrote to the vault
    ident_hashes: list[str] = field(default_factory=list)  # for conditional references to non-Patient resources
    wire: tuple[str | None, bytes, list[tuple[str, bytes]]] | None = None  # (key, value, headers) ready for Kafka
    content_hash: str | None = None


class Ingestor:
    """Validate, de-identify, vault, publish and record inputs from one source system."""

    def __init__(self, settings: Settings, *, source_system: str, site: str | None = None, publish: bool = True,
                 pseudonymizer: Pseudonymizer | None = None, ack_each_call: bool = True,
                 validation_workers: int = 0, workers: int | None = None) -> None:  # fmt: skip
        """`workers`: processes for large inputs (None: `settings.ingest_workers`, which defaults to one per CPU;
        0: in-process only). `validation_workers` > 0 is the older name of the same thing."""
        from lineage import LineageWriter

        self.settings = settings
        self.source = source_system
        self.site = site or settings.site
        self.publish = publish
        self.pseudo = pseudonymizer or CachingPseudonymizer.from_settings(settings)
        self.options = FhirDeidOptions(settings.deid_shift_dates, settings.deid_keep_zip3, settings.deid_keep_state)
        self.state = IngestState(settings)
        self.vault = RawVault(settings)
        self.lineage = LineageWriter(settings)
        self.lineage.start_run("ingest", {"source_system": source_system, "site": self.site}, flush=False)
        self.producer = None
        if publish:
            from careloop.kafka import EventProducer

            self.producer = EventProducer(settings)
        self._lock = threading.RLock()
        self.ack_each_call = ack_each_call
        self._drained: list[Event] = []
        self._settled: list[tuple[_Item, str | None, Any]] = []  # sent (or kept), not yet acked and recorded
        self._settles = 0  # how often _settle moved in-flight events to the seen-store
        self._inflight: dict[str, tuple[str | None, str | None, str | None]] = {}
        self._pool: Any = None
        from ingestion.workers import default_workers

        if workers is None and validation_workers > 0:
            workers = validation_workers
        self._workers = default_workers(settings.ingest_workers if workers is None else workers)
        self._env = Env(self.pseudo, self.options, settings.max_message_bytes)
        self._fhir_topic = settings.topic("fhir")
        self._send_raw = getattr(self.producer, "send_raw", None)
        self._dead: list[DeadLetter] = []
        self._last_lineage_flush = time.monotonic()
        self._dicom: Any = None
        self._closed = False

    # -- public API --------------------------------------------------------------------------------------------
    def submit_resource(self, resource: dict[str, Any] | bytes, *, method: str = "upsert") -> Outcome:
        """One resource; `method="delete"` publishes a delete of the resource's type and id instead."""
        if method == "delete" and isinstance(resource, dict):
            return self.submit_delete(str(resource.get("resourceType")), str(resource.get("id")))
        with self._lock:
            item = self._from_input(resource)
            self._commit([item])
            return item.outcome

    def submit_bundle(self, bundle: dict[str, Any] | bytes) -> list[Outcome]:
        """One outcome per entry (in entry order); a malformed Bundle gives one rejected outcome."""
        with self._lock:
            raw = bundle if isinstance(bundle, bytes) else None
            try:
                obj = parse_json(bundle) if isinstance(bundle, bytes) else bundle
                items = self._bundle_items(obj)
            except Rejection as r:
                items = [self._reject(r, raw if raw is not None else _dump(bundle), None, None)]
            self._commit(items)
            return [i.outcome for i in items]

    def submit_bundles(self, bundles: Iterable[dict[str, Any] | bytes]) -> Iterator[list[Outcome]]:
        """Many Bundles, pipelined: the workers validate and de-identify Bundle k+1 while this process vaults and
        publishes Bundle k. Yields one outcome list per Bundle, in order; results equal `submit_bundle` one by one."""
        prev: Any = None
        for bundle in bundles:
            with self._lock:
                cur = self._start_bundle(bundle)
            if prev is not None:
                yield self._complete_bundle(prev)
            prev = cur
        if prev is not None:
            yield self._complete_bundle(prev)

    def _start_bundle(self, bundle: dict[str, Any] | bytes) -> tuple[Any, ...]:
        raw = bundle if isinstance(bundle, bytes) else None
        settles = self._settles
        try:
            obj = parse_json(bundle) if isinstance(bundle, bytes) else bundle
            return ("ok", self._prepare_bundle(obj), settles)
        except Rejection as r:
            return ("rej", self._reject(r, raw if raw is not None else _dump(bundle), None, None), settles)

    def _complete_bundle(self, started: tuple[Any, ...]) -> list[Outcome]:
        with self._lock:
            items = self._finish_bundle(started[1]) if started[0] == "ok" else [started[1]]
            self._commit(items, recheck=started[2] != self._settles)
            return [i.outcome for i in items]

    def submit_ndjson(self, lines: Iterable[bytes], *, batch_size: int = 500) -> Iterator[Outcome]:
        """Streamed: one outcome per non-empty line (a Bundle line yields one per entry), committed in batches."""
        batch: list[bytes] = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            batch.append(line)
            if len(batch) >= batch_size:
                with self._lock:
                    items = self._lines_items(batch)
                    self._commit(items)
                yield from (i.outcome for i in items)
                batch = []
        if batch:
            with self._lock:
                items = self._lines_items(batch)
                self._commit(items)
            yield from (i.outcome for i in items)

    def _lines_items(self, lines: list[bytes]) -> list[_Item]:
        """NDJSON lines -> items in line order; the single resources go through one `_prepare` (the workers)."""
        slots: list[Any] = []
        specs: list[tuple[Any, Any, bytes | None]] = []
        for line in lines:
            try:
                obj = parse_json(line)
            except Rejection as r:
                slots.append([self._reject(r, line, None, None)])
                continue
            if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
                try:
                    slots.append(self._bundle_items(obj))
                except Rejection as r:
                    slots.append([self._reject(r, line, None, None)])
                continue
            slots.append(len(specs))
            specs.append((obj, None, line))
        done = self._finish(self._prepare(specs, self._refs({}, {}, []))) if specs else []
        return [x for slot in slots for x in ([done[slot]] if isinstance(slot, int) else slot)]

    def submit_delete(self, resource_type: str, logical_id: str) -> Outcome:
        with self._lock:
            item = self._delete_item(resource_type, logical_id)
            self._commit([item])
            return item.outcome

    def submit_dicom(self, data: bytes) -> Outcome:
        with self._lock:
            item = self._dicom_item(data)
            self._commit([item])
            return item.outcome

    def submit_dicom_stow(self, data: bytes) -> tuple[Outcome, dict[str, Any]]:
        """`submit_dicom` plus what a STOW-RS response needs (SOP class UID, PS3.18 failure reason)."""
        with self._lock:
            item = self._dicom_item(data)
            self._commit([item])
            return item.outcome, item.extra

    def drain(self) -> list[Event]:
        """With publish=False: the de-identified, validated events not yet taken."""
        with self._lock:
            out, self._drained = self._drained, []
            return out

    def drain_dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            out, self._dead = self._dead, []
            return out

    def resolve_person(self, patient_id: str | None, issuer: str | None = None) -> str:
        """DICOM PatientID -> person: a FHIR Patient with that identifier, else a keyed fallback person.

        With an IssuerOfPatientID the identifier system must match too (the issuer as the system, or `urn:oid:` +
        issuer); without one, any FHIR Patient identifier with that value matches (DICOM often carries no issuer)."""
        person, hashes = self._person_lookup(patient_id, issuer)
        for h in hashes:
            self.state.record_fallback(h, person)
        return person

    def _peek_person(self, patient_id: str | None, issuer: str | None = None) -> str:
        """What `resolve_person` would answer now, without recording a fallback person."""
        return self._person_lookup(patient_id, issuer)[0]

    def _person_lookup(self, patient_id: str | None, issuer: str | None) -> tuple[str, list[str]]:
        """(person, identifier hashes to record the fallback person under; empty when the index knew the person)."""
        if patient_id is None or not patient_id.strip():
            return self.pseudo.person("careloop:unknown-patient"), []
        if issuer:
            systems = [issuer] + ([f"urn:oid:{issuer}"] if re.fullmatch(r"[0-9.]+", issuer) else [])
            hashes = [self.pseudo.identifier(s, patient_id) for s in systems]
            fallback = f"{issuer}|{patient_id.strip()}"
        else:
            hashes, fallback = [self.pseudo.identifier(None, patient_id)], patient_id
        for h in hashes:
            person = self.state.person_for_identifier(h)
            if person is not None:
                return person, []
        return self.pseudo.person(fallback), hashes

    def flush(self) -> None:
        with self._lock:
            self.vault.flush()
            self._settle()
            self.lineage.flush()
            self._last_lineage_flush = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.vault.flush()
                self._settle()
                self.lineage.end_run("succeeded")
            finally:
                if self._pool is not None:
                    self._pool.close()
                if self.producer is not None:
                    self.producer.close()
                self.vault.close()
                self.state.close()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building items ------------------------------------------------------------------------------------------
    def _from_input(self, data: dict[str, Any] | bytes, *, allow_bundle: bool = False, many: bool = False) -> Any:
        raw = data if isinstance(data, bytes) else None
        try:
            obj = parse_json(data) if isinstance(data, bytes | str) else data
            if allow_bundle and isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
                items = self._bundle_items(obj)
                return items if many else items[0]
            item = self._finish(self._prepare([(obj, None, raw)], self._refs({}, {}, [obj])))[0]
        except Rejection as r:
            item = self._reject(r, raw if raw is not None else _dump(data), None, None)
        return [item] if many else item

    def _bundle_items(self, bundle: Any) -> list[_Item]:
        return self._finish_bundle(self._prepare_bundle(bundle))

    def _prepare_bundle(self, bundle: Any) -> tuple[list[Any], str, _Prepared]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise Rejection("InvalidFHIR", "expected a Bundle resource")
        btype = bundle.get("type")
        if not isinstance(btype, str) or btype not in BUNDLE_TYPES:
            shown = btype if isinstance(btype, str) and re.fullmatch(r"[a-z-]{1,40}", btype) else "(invalid)"
            raise Rejection("UnsupportedBundle", f"Bundle.type {shown!r} is not accepted; "
                            f"send one of {', '.join(sorted(BUNDLE_TYPES))}")  # fmt: skip
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise Rejection("InvalidFHIR", "Bundle.entry must be a list")
        full_urls: dict[str, tuple[str, str]] = {}
        persons: dict[str, str] = {}
        resources: list[Any] = []
        specs: list[tuple[Any, Any, bytes | None]] = []
        for e in entries:
            r = e.get("resource") if isinstance(e, dict) else None
            if not isinstance(r, dict):
                continue
            resources.append(r)
            fu = e.get("fullUrl")
            rtype = r.get("resourceType")
            if isinstance(fu, str) and isinstance(rtype, str):
                rid = r.get("id") if isinstance(r.get("id"), str) else urn_id(fu)
                if rid:
                    full_urls[fu] = (rtype, rid)
            if rtype == "Patient" and isinstance(r.get("id"), str):
                idents = r.get("identifier")
                for ident in idents if isinstance(idents, list) else []:
                    if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"].strip():
                        persons[self.pseudo.identifier(None, ident["value"])] = self.pseudo.person(r["id"])
            if not _skipped_entry(e, btype):
                specs.append((r, fu, None))
        return entries, btype, self._prepare(specs, self._refs(full_urls, persons, resources))

    def _finish_bundle(self, prepared: tuple[list[Any], str, _Prepared]) -> list[_Item]:
        entries, btype, prep = prepared
        done = iter(self._finish(prep))
        refs = prep.refs
        items: list[_Item] = []
        for n, e in enumerate(entries):
            if not isinstance(e, dict):
                items.append(
                    self._reject(Rejection("InvalidFHIR", f"entry {n} is not an object"), _dump(e), None, None)
                )
                continue
            req = e.get("request") if isinstance(e.get("request"), dict) else {}
            r = e.get("resource")
            if req.get("method") == "DELETE" and r is None:
                items.append(self._delete_from_url(req.get("url"), refs))
                continue
            if r is None and req.get("method") in ("GET", "HEAD"):
                rej = Rejection("UnsupportedInteraction", f"entry {n} is a {req['method']} (read) request; the gateway "
                                "ingests writes only", 400)  # fmt: skip
                items.append(self._reject(rej, _dump(e), None, None))
                continue
            if r is None:
                items.append(self._reject(Rejection("InvalidFHIR", f"entry {n} has no resource"), _dump(e), None, None))
                continue
            if _skipped_entry(e, btype):
                continue  # the notification's own status entry (Subscription backport), not data
            if not isinstance(r, dict):
                items.append(self._finish(self._prepare([(r, e.get("fullUrl"), None)], refs))[0])
                continue
            items.append(next(done))
        return items

    def _refs(self, full_urls: dict[str, tuple[str, str]], persons: dict[str, str], resources: list[Any]) -> RefIndex:
        """A RefIndex whose conditional references resolve against `resources` and the identity index."""
        from ingestion.conditional import ConditionalResolver

        resolver = ConditionalResolver(self.pseudo, self.state, resources)
        return RefIndex(full_urls, persons, conditional=resolver.resolve)

    def _prepare(self, specs: list[tuple[Any, Any, bytes | None]], refs: RefIndex) -> _Prepared:
        """Hash, look up the seen-store once, and (for large inputs) hand the new resources to the workers."""
        digests = [_digest(s[0]) for s in specs]  # each resource is hashed once
        eids = [str(event_id_for(self.source, d)) for d in digests]
        prior = self.state.seen(eids) if self.publish else {}
        fresh = [i for i, s in enumerate(specs) if eids[i] not in prior and eids[i] not in self._inflight
                 and isinstance(s[0], dict)]  # fmt: skip
        prep = _Prepared(specs, refs, digests, eids, prior)
        pool = self._worker_pool(len(fresh))
        if pool is not None:
            work = [(eids[i], digests[i], specs[i][1] if isinstance(specs[i][1], str) else None, specs[i][0],
                     _text(specs[i][2])) for i in fresh]  # fmt: skip
            try:
                prep.futures = pool.submit(refs.full_urls, refs.persons, work)
                prep.fresh = fresh
                return prep
            except (TypeError, orjson.JSONEncodeError):
                pass  # e.g. an integer beyond 64 bits: validated and rejected in-process
        checks = validate_all([specs[i][0] for i in fresh])
        prep.checks = dict(zip(fresh, checks, strict=True))
        return prep

    def _finish(self, prep: _Prepared) -> list[_Item]:
        results: dict[int, tuple[Any, ...]] = {}
        if prep.futures is not None:
            pos = 0
            for fut, size in prep.futures:
                try:
                    chunk = fut.result()
                except Exception:  # a broken worker: everything of that chunk runs in-process
                    chunk = [None] * size
                for r in chunk:
                    if r is not None and r[0] != "main":
                        results[prep.fresh[pos]] = r
                    pos += 1
        items = []
        for i, (resource, full_url, raw) in enumerate(prep.specs):
            eid, hit = prep.eids[i], results.get(i)
            p = prep.prior.get(eid) or (self._inflight.get(eid) if self.publish else None)
            if p is not None:  # identical content already published: no validation, no de-identification
                out = Outcome(status="duplicate", event_id=eid, resource_type=p[0], resource_id=p[1], person=p[2],
                              http_status=200)  # fmt: skip
                items.append(_Item(out, "fhir", None, None, "validation", "duplicate"))
            elif hit is not None:
                items.append(self._from_worker(hit, eid))
            else:
                items.append(self._guarded(resource, prep.refs, full_url, raw, prep.digests[i], eid,
                                           prep.checks.get(i, False)))  # fmt: skip
        return items

    def _worker_pool(self, n: int) -> Any:
        if n < MIN_POOL_INPUT or self._workers <= 0 or type(self.pseudo) not in (Pseudonymizer, CachingPseudonymizer):
            return None
        if self._pool is None:
            from careloop.secrets import load_key
            from ingestion.workers import WorkerPool

            self._pool = WorkerPool(self._workers, pseudo_key=self.pseudo._key,
                                    max_shift_days=self.pseudo.max_shift_days,
                                    vault_key=load_key(self.settings, "vault"), vault_path=str(self.vault.path),
                                    options=self.options, max_message_bytes=self.settings.max_message_bytes,
                                    settings=self.settings)  # fmt: skip
        return self._pool

    def warm_up(self) -> None:
        """Start the worker processes and open the lineage lake now, instead of on the first large input and the
        first lineage flush (a long-running gateway or publish run pays these once)."""
        with self._lock:
            pool = self._worker_pool(MIN_POOL_INPUT)
            if pool is not None:
                pool.warm_up()
            self.lineage.flush()  # opens the lake connection and records the run start

    def _from_worker(self, r: tuple[Any, ...], event_id: str) -> _Item:
        if r[0] == "rej":
            _, error_class, reason, http_status, stage, rtype, pid, sealed = r
            out = _construct(Outcome, {"status": "rejected", "event_id": event_id, "resource_type": rtype,
                                       "resource_id": pid, "person": None, "reason": reason,
                                       "error_class": error_class, "http_status": http_status, "topic": None,
                                       "partition": None, "offset": None})  # fmt: skip
            item = _Item(out, "deadletter", None, None, stage, f"{rtype}.rejected" if rtype else "rejected")
            item.sealed = sealed
            return item
        _, rtype, pid, person, value, occurred_at, digest, identifiers, sealed, hashes = r
        accepted = Accepted(rtype, pid, person, value, occurred_at, digest, [tuple(x) for x in identifiers], hashes)
        return self._accepted_item(event_id, accepted, None, sealed)

    def _accepted_item(self, event_id: str, a: Accepted, raw: bytes | None, sealed: Any = None) -> _Item:
        event_type = f"fhir.{a.rtype}.upsert"
        out = _construct(Outcome, {"status": "accepted", "event_id": event_id, "resource_type": a.rtype,
                                   "resource_id": a.pid, "person": a.person, "reason": None, "error_class": None,
                                   "http_status": 201, "topic": self._fhir_topic, "partition": None,
                                   "offset": None})  # fmt: skip
        item = _Item(out, "fhir", None, raw, "validation", event_type, a.identifiers, f"{a.rtype}/{a.pid}")
        item.sealed, item.ident_hashes, item.content_hash = sealed, a.ident_hashes, a.content_hash
        ingested_at, trace_id = utcnow(), uuid.uuid4().hex
        if self._send_raw is not None:  # straight to the wire: no pydantic models on the hot path
            headers = [("event_id", event_id.encode()), ("event_type", event_type.encode()),
                       ("schema_version", SCHEMA_VERSION.encode()), ("source_system", self.source.encode()),
                       ("site", self.site.encode()), ("occurred_at", a.occurred_at.isoformat().encode()),
                       ("ingested_at", ingested_at.isoformat().encode()), ("trace_id", trace_id.encode()),
                       ("content_hash", a.content_hash.encode())]  # fmt: skip
            item.wire = (a.person or a.pid, a.value, headers)
            return item
        headers = _construct(EventHeaders, {
            "event_id": uuid.UUID(event_id), "event_type": event_type, "schema_version": SCHEMA_VERSION,
            "source_system": self.source, "site": self.site, "occurred_at": a.occurred_at, "ingested_at": ingested_at,
            "trace_id": trace_id, "content_hash": a.content_hash,
        })  # fmt: skip
        item.event = _construct(Event, {"key": a.person or a.pid, "value": orjson.loads(a.value), "headers": headers})
        return item

    def _guarded(self, resource: Any, refs: RefIndex, full_url: Any, raw: bytes | None, digest: str, event_id: str,
                 check: Any) -> _Item:  # fmt: skip
        """One resource -> item; a bug on an odd input dead-letters that input instead of failing the batch."""
        raw = raw if raw is not None else _dump(resource)
        try:
            r = process_resource(resource, digest, full_url, refs, self._env, validated=check,
                                 lookup=self.state.person_for_identifier,
                                 patient_without_id=self._patient_without_id)  # fmt: skip
        except Rejection as rej:
            return self._reject(rej, raw, None, None, event_id)
        except Exception as err:
            rej = Rejection("InternalError", f"unexpected {type(err).__name__} while processing this resource "
                            "(a careloop bug; the original is in the vault)", 500)  # fmt: skip
            return self._reject(rej, raw, None, None, event_id)
        if isinstance(r, Rejected):
            rej = Rejection(r.error_class, r.reason, r.http_status, r.stage)
            return self._reject(rej, raw, r.rtype, r.pid, event_id)
        return self._accepted_item(event_id, r, raw)

    def _patient_without_id(self, resource: dict[str, Any]) -> tuple[str, str] | None:
        """A create without id: (stable keyed logical id, person) from its first identifier; a Patient already known
        by one of its identifiers keeps that person."""
        values = [i["value"].strip() for i in resource.get("identifier") or []
                  if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"].strip()]  # fmt: skip
        if not values:
            return None
        logical_id = "i" + self.pseudo.token("patient-id", values[0], 32)
        for v in values:
            known = self.state.person_for_identifier(self.pseudo.identifier(None, v))
            if known is not None:
                return logical_id, known
        return logical_id, self.pseudo.person(logical_id)

    def _delete_from_url(self, url: Any, refs: RefIndex | None = None) -> _Item:
        """`Type/id`, or a conditional delete `Type?identifier=[system|]value` resolved like a conditional reference
        (against this Bundle, then the identity indexes); one that matches nothing is a per-entry error."""
        if isinstance(url, str) and "?" in url:
            try:
                hit = (refs or self._refs({}, {}, [])).resolve(url.strip("/"))
            except Rejection as rej:
                return self._reject(rej, _dump({"url": url}), None, None)
            if hit is not None:
                if hit[2] == PSEUDONYMOUS:
                    return self._delete_item(hit[0], hit[1], pseudonymous=True)
                return self._delete_item(hit[0], hit[1])
        parts = url.strip("/").split("/") if isinstance(url, str) else []
        if len(parts) != 2:
            rej = Rejection("InvalidFHIR", "a DELETE entry needs request.url of the form Type/id or "
                            "Type?identifier=[system|]value", 400)  # fmt: skip
            return self._reject(rej, _dump({"url": url}), None, None)
        return self._delete_item(parts[0], parts[1])

    def _delete_item(self, resource_type: str, logical_id: str, *, pseudonymous: bool = False) -> _Item:
        raw = _dump({"method": "DELETE", "resourceType": resource_type, "id": logical_id})
        now = utcnow()
        digest = content_hash({"delete": f"{resource_type}/{logical_id}", "at": now.isoformat()})
        event_id = str(event_id_for(self.source, digest))
        try:
            resource_type_of({"resourceType": resource_type})
        except Rejection as rej:
            return self._reject(rej, raw, None, None, event_id)
        if not isinstance(logical_id, str) or not _ID.match(logical_id):
            rej = Rejection("InvalidFHIR", "a logical id must match [A-Za-z0-9-.]{1,64}", 400)
            return self._reject(rej, raw, resource_type, None, event_id)
        pid = logical_id if pseudonymous else pseudo_id(self.pseudo, resource_type, logical_id)
        person = pid if resource_type == "Patient" else self.state.person_of_resource(f"{resource_type}/{pid}")
        last_updated = now.isoformat().replace("+00:00", "Z")
        if person and self.options.shift_dates:
            last_updated = shift_date_text(last_updated, self.pseudo.date_shift_days(person))
        value = {"resourceType": resource_type, "id": pid, "meta": {"lastUpdated": last_updated}}
        headers = EventHeaders(event_id=event_id, event_type=f"fhir.{resource_type}.delete", source_system=self.source,
                               site=self.site, occurred_at=now, content_hash=content_hash(value))  # fmt: skip
        out = Outcome(status="accepted", event_id=event_id, resource_type=resource_type, resource_id=pid,
                      person=person, http_status=200, topic=self.settings.topic("fhir"))  # fmt: skip
        return _Item(out, "fhir", Event(key=person or pid, value=value, headers=headers), raw, "gateway",
                     headers.event_type)  # fmt: skip

    def _dicom_setup(self) -> tuple[Any, Any]:
        if self._dicom is None:
            from ingestion.dicom import DicomDeidOptions, ObjectStore

            self._dicom = (DicomDeidOptions(retain_modified_dates=self.settings.deid_shift_dates),
                           ObjectStore(self.settings))  # fmt: skip
        return self._dicom

    def _dicom_item(self, data: bytes, event_id: str | None = None, *, check_seen: bool = True) -> _Item:
        from ingestion.dicom import DicomRejected, deidentify_dicom, dicom_event_value

        if event_id is None:
            event_id = str(event_id_for(self.source, "sha256:" + hashlib.sha256(data).hexdigest()))
        options, store = self._dicom_setup()
        if check_seen:
            prior = self.state.seen([event_id]).get(event_id)
            if prior is not None:
                return self._dicom_duplicate(event_id, prior)
        try:
            result = deidentify_dicom(data, self.pseudo, self.resolve_person, options)
        except DicomRejected as err:
            return self._dicom_rejected(event_id, data, err.error_class, err.reason, err.sop_class_uid,
                                        err.failure_reason)  # fmt: skip
        except Exception as err:  # never crash on a DICOM file; the reason names only the error type
            reason = f"DICOM de-identification failed: {type(err).__name__}"
            return self._dicom_rejected(event_id, data, "deidentification_failed", reason, None, 0x0110)
        uri = store.put(result.dataset_bytes, result.sha256, verified=True)
        value = dicom_event_value(result, uri)
        return self._dicom_accepted(event_id, value, result.person, result.sop_instance_uid, result.sop_class_uid,
                                    result.occurred_at, content_hash(value), data)  # fmt: skip

    def _dicom_duplicate(self, event_id: str, prior: tuple[str | None, str | None, str | None]) -> _Item:
        out = Outcome(status="duplicate", event_id=event_id, resource_type="DICOM", resource_id=prior[1],
                      person=prior[2], http_status=200)  # fmt: skip
        return _Item(out, "dicom")

    def _dicom_rejected(self, event_id: str, data: bytes, error_class: str, reason: str, sop_class_uid: str | None,
                        failure_reason: int, sealed: str | None = None) -> _Item:  # fmt: skip
        item = self._reject(Rejection(error_class, reason, 422, "deid"), data, "DICOM", None, event_id)
        item.extra = {"sop_class_uid": sop_class_uid, "failure_reason": failure_reason}
        if sealed is not None:
            item.sealed, item.raw = sealed, None
        return item

    def _dicom_accepted(self, event_id: str, value: dict[str, Any], person: str, sop_instance_uid: str | None,
                        sop_class_uid: str | None, occurred_at: Any, digest: str, data: bytes | None,
                        sealed: str | None = None) -> _Item:  # fmt: skip
        headers = EventHeaders(event_id=event_id, event_type="dicom.instance", source_system=self.source,
                               site=self.site, occurred_at=occurred_at or utcnow(), content_hash=digest)  # fmt: skip
        out = Outcome(status="accepted", event_id=event_id, resource_type="DICOM", resource_id=sop_instance_uid,
                      person=person, http_status=200, topic=self.settings.topic("dicom"))  # fmt: skip
        item = _Item(out, "dicom", Event(key=person, value=value, headers=headers), data, "deid",
                     "dicom.instance")  # fmt: skip
        item.extra = {"sop_class_uid": sop_class_uid}
        item.sealed = sealed
        return item

    # -- DICOM batches through the workers ------------------------------------------------------------------------
    def submit_dicoms(self, files: Iterable[bytes], *, batch_size: int = 0) -> Iterator[Outcome]:
        """Many DICOM files, one outcome each, in order; results equal `submit_dicom` one by one.

        The workers de-identify batch k+1 while this process vaults, publishes and records batch k. What needs this
        process's state stays here: the seen-store, the person resolution (identity index), Kafka and lineage.
        `batch_size` 0: 4 files per worker (at least 8)."""
        size = batch_size or max(8, 4 * max(self._workers, 1))
        prev: Any = None
        batch: list[bytes] = []
        for data in files:
            batch.append(data)
            if len(batch) < size:
                continue
            with self._lock:
                cur = self._start_dicoms(batch)
            batch = []
            if prev is not None:
                yield from self._complete_dicoms(prev)
            prev = cur
        if batch:
            with self._lock:
                cur = self._start_dicoms(batch)
            if prev is not None:
                yield from self._complete_dicoms(prev)
            prev = cur
        if prev is not None:
            yield from self._complete_dicoms(prev)

    def _start_dicoms(self, files: list[bytes]) -> tuple[list[Any], list[Any], Any, int]:
        """Hash, look up the seen-store, resolve persons without side effects, hand the new files to the workers."""
        from ingestion.dicom.deid import peek_patient

        settles = self._settles
        eids = [str(event_id_for(self.source, "sha256:" + hashlib.sha256(d).hexdigest())) for d in files]
        prior = self.state.seen(eids) if self.publish else {}
        slots: list[Any] = []
        work: list[tuple[str, bytes, str | None, str | None, str | None]] = []
        for data, eid in zip(files, eids, strict=True):
            if eid in prior:
                slots.append(("dup", eid, prior[eid]))
                continue
            keys = peek_patient(data)
            person = self._peek_person(*keys) if keys is not None else None
            slots.append(("new", eid, data, keys, person))
            work.append((eid, data, *(keys or (None, None)), person))
        pool = self._worker_pool(MIN_POOL_INPUT if len(work) >= 2 else 0)
        futures = pool.submit_dicom(work) if pool is not None and work else None
        return slots, work, futures, settles

    def _complete_dicoms(self, started: tuple[list[Any], list[Any], Any, int]) -> list[Outcome]:
        slots, work, futures, settles = started
        results: list[Any] = []
        if futures is not None:
            for fut, n in futures:
                try:
                    results.extend(fut.result())
                except Exception:  # a broken worker: that chunk runs in-process
                    results.extend([None] * n)
        by_eid = dict(zip((w[0] for w in work), results, strict=False))
        with self._lock:
            items = []
            for slot in slots:
                if slot[0] == "dup":
                    items.append(self._dicom_duplicate(slot[1], slot[2]))
                    continue
                _, eid, data, _keys, person = slot
                items.append(self._dicom_from_worker(eid, data, person, by_eid.get(eid)))
            self._commit(items, recheck=settles != self._settles)
            return [i.outcome for i in items]

    def _dicom_from_worker(self, eid: str, data: bytes, person: str | None, r: Any) -> _Item:
        """A worker's result -> item, replaying the person resolution here; anything unexpected runs in-process."""
        if r is None or r[0] == "main":
            return self._dicom_item(data, eid, check_seen=False)
        called = r[5] if r[0] == "rej" else r[7]
        if called is not None:
            pid, issuer = called
            resolved = self.resolve_person(pid, issuer=issuer) if issuer else self.resolve_person(pid)
            if resolved != person:  # the identity index changed since the batch started: redo it here
                return self._dicom_item(data, eid, check_seen=False)
        if r[0] == "rej":
            _, error_class, reason, sop_class_uid, failure_reason, _called, sealed = r
            return self._dicom_rejected(eid, data, error_class, reason, sop_class_uid, failure_reason, sealed)
        _, value, person, sop_instance_uid, sop_class_uid, occurred_at, deidentified, _called, sealed = r
        value["uri"] = self._dicom_setup()[1].put(deidentified, value["sha256"], verified=True)
        return self._dicom_accepted(eid, value, person, sop_instance_uid, sop_class_uid, occurred_at,
                                    content_hash(value), None, sealed)  # fmt: skip

    def _reject(self, rej: Rejection, raw: bytes, rtype: str | None, pid: str | None,
                event_id: str | None = None) -> _Item:  # fmt: skip
        if event_id is None:
            event_id = str(event_id_for(self.source, content_hash(raw)))
        out = Outcome(status="rejected", event_id=event_id, resource_type=rtype, resource_id=pid,
                      reason=rej.reason, error_class=rej.error_class, http_status=rej.http_status)  # fmt: skip
        return _Item(out, "deadletter", None, raw, rej.stage, f"{rtype}.rejected" if rtype else "rejected")

    # -- committing a batch ------------------------------------------------------------------------------------
    def _commit(self, items: list[_Item], *, recheck: bool = False) -> None:
        """`recheck`: the items were checked against the seen-store before an earlier batch settled (pipelined
        paths), so what that batch published is no longer in flight but in the seen-store: look again."""
        if not items:
            return
        batch_ids: set[str] = set()
        seen: Any = ()
        if recheck and self.publish:
            seen = self.state.seen([i.outcome.event_id for i in items if i.outcome.status == "accepted"])
        for i in items:
            if i.outcome.status != "accepted":
                continue
            eid = i.outcome.event_id
            if eid in batch_ids or eid in self._inflight or eid in seen:
                i.outcome.status, i.outcome.http_status, i.event, i.outcome.topic = "duplicate", 200, None, None
                i.wire = None
            batch_ids.add(eid)
        for i in items:
            if i.outcome.status == "duplicate":
                continue
            if i.sealed is not None:
                i.vault_ref = i.sealed  # written (durably) by the worker
            elif i.raw is not None:
                i.vault_ref = self.vault.put(i.outcome.event_id, i.raw)
        self.vault.flush()  # durable before anything is published
        ok = [i for i in items if i.outcome.status == "accepted"]
        links = self.state.index_identifiers([p for i in ok for p in i.identifiers])
        self.state.remember_persons([(i.resource_key, i.outcome.person) for i in ok
                                     if i.resource_key and i.outcome.person])  # fmt: skip
        self.state.index_resource_identifiers([(i.outcome.resource_type, h, i.outcome.resource_id)
                                               for i in ok for h in i.ident_hashes])  # fmt: skip
        for earlier, person in links:
            why = {"why": "a DICOM PatientID arrived before the FHIR Patient with that identifier"}
            self.lineage.edge("person", earlier, "person", person, "same_person", why)
        self._send(items)

    def _dead_letter_event(self, i: _Item) -> Event:
        o = i.outcome
        dl = DeadLetter(stage=i.stage or "validation", error_class=o.error_class or "Rejected", reason=o.reason or "",
                        original_event_id=o.event_id, vault_ref=i.vault_ref,
                        details={"source_system": self.source, "resource_type": o.resource_type,
                                 "resource_id": o.resource_id, "http_status": o.http_status})  # fmt: skip
        eid = event_id_for(f"deadletter:{self.source}", o.event_id)
        value = dl.model_dump(mode="json")
        headers = EventHeaders(event_id=eid, event_type=f"deadletter.{i.stage or 'validation'}",
                               source_system=self.source, site=self.site, occurred_at=utcnow(),
                               content_hash=content_hash(value))  # fmt: skip
        if not self.publish:
            self._dead.append(dl)
        return Event(key=o.person, value=value, headers=headers)

    def _send(self, items: list[_Item]) -> None:
        """Hand the batch to the producer; with `ack_each_call` wait for the broker's acks now, else later."""
        for i in items:
            if i.outcome.status == "accepted" and i.wire is not None and self._send_raw is not None:
                o = i.outcome
                self._inflight[o.event_id] = (o.resource_type, o.resource_id, o.person)
                try:
                    future = self._send_raw(self._fhir_topic, *i.wire)
                except Exception as err:
                    raise BrokerError(f"publishing to Kafka failed: {type(err).__name__}: {err}") from err
                self._settled.append((i, i.topic, future))
                continue
            if i.outcome.status == "accepted" and i.event is not None:
                topic, event = i.topic, i.event
            elif i.outcome.status == "rejected":
                topic, event = "deadletter", self._dead_letter_event(i)
            else:
                self._settled.append((i, None, None))
                continue
            if self.producer is None:
                if topic != "deadletter":
                    self._drained.append(event)
                self._settled.append((i, topic, None))
                continue
            if i.outcome.status == "accepted":
                o = i.outcome
                self._inflight[o.event_id] = (o.resource_type, o.resource_id, o.person)
            try:
                future = self.producer.send_async(self.settings.topic(topic), event)
            except Exception as err:
                raise BrokerError(f"publishing to Kafka failed: {type(err).__name__}: {err}") from err
            self._settled.append((i, topic, future))
        if self.ack_each_call or len(self._settled) >= SETTLE_EVERY:
            self._settle()

    def _settle(self) -> None:
        """Wait for acks, then mark the published events seen and record their lineage (offsets included)."""
        pending, self._settled = self._settled, []
        if not pending:
            return
        self._settles += 1
        if self.producer is not None:
            try:
                self.producer.flush()
                for i, topic, fut in pending:
                    if fut is None:
                        continue
                    meta = fut.get(timeout=60)
                    i.outcome.topic = meta.topic
                    if topic != "deadletter":
                        i.outcome.partition, i.outcome.offset = meta.partition, meta.offset
            except BrokerError:
                raise
            except Exception as err:
                raise BrokerError(f"publishing to Kafka failed: {type(err).__name__}: {err}") from err
            done = [i.outcome for i, topic, fut in pending if fut is not None and i.outcome.status == "accepted"]
            self.state.mark_seen([(o.event_id, o.resource_type, o.resource_id, o.person, o.topic or "",
                                   o.partition or 0, o.offset or 0) for o in done])  # fmt: skip
            for o in done:
                self._inflight.pop(o.event_id, None)
        self._record_lineage([i for i, _, _ in pending])

    def _record_lineage(self, items: list[_Item]) -> None:
        rows, edges = [], []
        for i in items:
            o = i.outcome
            h = i.content_hash or (i.event.headers.content_hash if i.event is not None else None)
            rows.append({
                "event_id": o.event_id, "status": o.status, "stage": i.stage, "event_type": i.event_type,
                "source_system": self.source, "site": self.site, "resource_type": o.resource_type,
                "resource_id": o.resource_id, "content_hash": h, "topic": o.topic, "partition": o.partition,
                "offset": o.offset, "vault_ref": i.vault_ref, "reason": o.reason,
            })  # fmt: skip
            if o.status == "accepted" and o.offset is not None:
                edges.append(("event", o.event_id, "kafka", f"{o.topic}/{o.partition}/{o.offset}", "published_as"))
        self.lineage.ingest_event_rows(rows)
        self.lineage.edge_rows(edges)
        if time.monotonic() - self._last_lineage_flush > LINEAGE_FLUSH_S:
            self.lineage.flush()
            self._last_lineage_flush = time.monotonic()


def _construct(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """`cls.model_construct(**values)` without its per-field default lookups (~20 µs a model): every field is given
    and built here from trusted values."""
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", set(values))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


def _text(raw: bytes | None) -> str | None:
    """The original bytes of an NDJSON line for a worker's vault write (JSON must be UTF-8: RFC 8259)."""
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _skipped_entry(e: Any, btype: str) -> bool:
    r = e.get("resource") if isinstance(e, dict) else None
    return btype == "history" and isinstance(r, dict) and r.get("resourceType") in ("Parameters", "SubscriptionStatus")


@dataclass
class _Prepared:
    """A batch of resources between `_prepare` (hashed, seen-store checked, maybe sent to the workers) and
    `_finish` (items built)."""

    specs: list[tuple[Any, Any, bytes | None]]
    refs: RefIndex
    digests: list[str]
    eids: list[str]
    prior: dict[str, tuple[str | None, str | None, str | None]]
    futures: list[tuple[Any, int]] | None = None
    fresh: list[int] = field(default_factory=list)
    checks: dict[int, Any] = field(default_factory=dict)


def _digest(obj: Any) -> str:
    try:
        return content_hash(obj) if isinstance(obj, dict | list) else content_hash(_dump(obj))
    except (TypeError, orjson.JSONEncodeError):
        return content_hash(repr(obj))


def _dump(obj: Any) -> bytes:
    if isinstance(obj, bytes):
        return obj
    try:
        return orjson.dumps(obj)
    except TypeError:
        return repr(obj).encode()
