"""The EHR-facing HTTP gateway (FastAPI): FHIR R4 endpoints, bulk NDJSON `$import`, Subscription notifications and
DICOMweb STOW-RS, all in front of the same `Ingestor` core as `careloop publish`.

Errors are FHIR OperationOutcomes (DICOM JSON for STOW) with 400/401/413/415/422; a 500 means a bug.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careloop.errors import BrokerError
from careloop.settings import Settings, load_settings
from ingestion.apikeys import ApiKeys
from ingestion.bulk_import import ImportJobs
from ingestion.core import BUNDLE_TYPES, Ingestor, Outcome
from ingestion.fhir_schema import is_resource_type
from ingestion.fhir_validate import Rejection, parse_json

FHIR_JSON = "application/fhir+json"
LINEAGE_FLUSH_EVERY_S = 10.0
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
NDJSON_TYPES = ("application/fhir+ndjson", "application/ndjson", "application/x-ndjson")
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 400: "400 Bad Request", 413: "413 Payload Too Large",
               422: "422 Unprocessable Entity"}  # fmt: skip
ISSUE_CODE = {400: "structure", 401: "login", 404: "not-found", 413: "too-costly", 415: "not-supported",
              422: "invalid", 500: "exception", 503: "transient"}  # fmt: skip


class HttpProblem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def operation_outcome(severity: str, code: str, text: str, **extra: Any) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text}
    issue.update(extra)
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def fhir_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def problem_response(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="careloop"'} if status == 401 else None
    sev = "fatal" if status >= 500 else "error"
    return fhir_response(operation_outcome(sev, ISSUE_CODE.get(status, "processing"), message), status, headers)


def outcome_resource(o: Outcome) -> dict[str, Any]:
    if o.status == "rejected":
        return operation_outcome("error", ISSUE_CODE.get(o.http_status, "invalid"), o.reason or "rejected",
                                 details={"text": o.error_class or "rejected"})  # fmt: skip
    text = f"{o.status}: event {o.event_id}"
    if o.resource_type and o.resource_id:
        text += f" ({o.resource_type}/{o.resource_id})"
    return operation_outcome("information", "informational", text)


def outcome_response(o: Outcome) -> Response:
    headers = {}
    if o.status != "rejected" and o.resource_type and o.resource_id:
        headers["Location"] = f"/fhir/{o.resource_type}/{o.resource_id}"
    headers["X-Careloop-Event-Id"] = o.event_id
    return fhir_response(outcome_resource(o), o.http_status, headers)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _require_type(request: Request, allowed: tuple[str, ...]) -> None:
    mt = _media_type(request)
    if mt not in allowed:
        raise HttpProblem(415, f"content type {mt or '(none)'!r} not supported here; use {' or '.join(allowed)}")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HttpProblem(413, f"payload of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpProblem(413, f"payload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _ndjson_lines(request: Request, line_limit: int) -> AsyncIterator[tuple[int, bytes]]:
    """Streamed NDJSON: (line number, line) without reading the whole body."""
    buf = b""
    n = 0
    async for chunk in request.stream():
        buf += chunk
        while True:
            cut = buf.find(b"\n")
            if cut < 0:
                break
            line, buf = buf[:cut], buf[cut + 1 :]
            n += 1
            if len(line) > line_limit:
                raise HttpProblem(413, f"NDJSON line {n} exceeds the limit of {line_limit} bytes (earlier lines "
                                  "were ingested)")  # fmt: skip
            yield n, line
        if len(buf) > line_limit:
            raise HttpProblem(413, f"NDJSON line {n + 1} exceeds the limit of {line_limit} bytes")
    if buf.strip():
        yield n + 1, buf


class Gateway:
    """Shared state of one app: API keys and one Ingestor per source system."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = ApiKeys(settings)
        self._ingestors: dict[str, Ingestor] = {}
        self._lock = threading.Lock()
        self.imports = ImportJobs(settings)

    def source_of(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        source = self.keys.verify(token.strip()) if scheme.lower() == "bearer" else None
        if source is None:
            raise HttpProblem(401, "a valid bearer API key is required (create one with `careloop keys create`)")
        return source

    def ingestor(self, source: str) -> Ingestor:
        with self._lock:
            ing = self._ingestors.get(source)
            if ing is None:
                ing = self._ingestors[source] = Ingestor(self.settings, source_system=source)
            return ing

    def flush(self) -> None:
        with self._lock:
            ingestors = list(self._ingestors.values())
        for ing in ingestors:
            ing.flush()

    def close(self) -> None:
        self.imports.close()  # cancel running $import jobs before their Ingestors close
        with self._lock:
            for ing in self._ingestors.values():
                with contextlib.suppress(Exception):
                    ing.close()
            self._ingestors.clear()


def _bundle_response(bundle_type: str, outcomes: list[Outcome]) -> dict[str, Any]:
    rtype = "transaction-response" if bundle_type == "transaction" else "batch-response"
    entries = []
    for o in outcomes:
        resp: dict[str, Any] = {"status": STATUS_TEXT.get(o.http_status, str(o.http_status))}
        if o.status == "rejected":
            resp["outcome"] = outcome_resource(o)
        elif o.resource_type and o.resource_id:
            resp["location"] = f"{o.resource_type}/{o.resource_id}"
        entries.append({"response": resp})
    return {"resourceType": "Bundle", "type": rtype, "entry": entries}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    gw = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import asyncio

        async def flush_periodically() -> None:  # lineage rows of an idle gateway still reach the lake
            while True:
                await asyncio.sleep(LINEAGE_FLUSH_EVERY_S)
                with contextlib.suppress(Exception):
                    await run_in_threadpool(gw.flush)

        task = asyncio.create_task(flush_periodically())
        try:
            yield
        finally:
            task.cancel()
            gw.close()

    app = FastAPI(title="careloop gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gw

    @app.exception_handler(HttpProblem)
    async def _problem(request: Request, exc: HttpProblem) -> Response:
        return problem_response(exc.status, exc.message)

    @app.exception_handler(BrokerError)
    async def _broker(request: Request, exc: BrokerError) -> Response:
        return problem_response(503, "the event broker is unavailable; retry later")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        return problem_response(500, f"internal error ({type(exc).__name__})")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/fhir/metadata")
    async def metadata() -> Response:
        return fhir_response({
            "resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
            "format": ["json", "ndjson"], "date": "2026-01-01",
            "rest": [{"mode": "server", "interaction": [{"code": "transaction"}, {"code": "batch"}],
                      "operation": [{"name": "import", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/import"}]}],
        })  # fmt: skip

    async def _json_body(request: Request) -> bytes:
        _require_type(request, JSON_TYPES)
        return await _read_body(request, settings.gateway_max_body_bytes)

    async def _bundle(request: Request) -> Response:
        source = gw.source_of(request)
        body = await _json_body(request)
        try:
            obj = parse_json(body)
        except Rejection as r:
            ing = gw.ingestor(source)
            out = (await run_in_threadpool(ing.submit_bundle, body))[0]
            return problem_response(r.http_status, out.reason or r.reason)
        if not isinstance(obj, dict) or obj.get("resourceType") != "Bundle":
            raise HttpProblem(422, "this endpoint expects a Bundle; POST single resources to /fhir/{type}")
        ing = gw.ingestor(source)
        outcomes = await run_in_threadpool(ing.submit_bundle, obj)
        btype = obj.get("type")
        if not isinstance(btype, str) or btype not in BUNDLE_TYPES or not isinstance(obj.get("entry", []), list):
            return outcome_response(outcomes[0])  # the Bundle itself was rejected (and dead-lettered)
        return fhir_response(_bundle_response(str(obj.get("type")), outcomes))

    app.post("/fhir")(_bundle)
    app.post("/fhir/")(_bundle)
    app.post("/fhir/subscription-notification")(_bundle)

    @app.post("/fhir/$import")
    async def bulk_import(request: Request) -> Response:
        source = gw.source_of(request)
        _require_type(request, NDJSON_TYPES)
        ing = gw.ingestor(source)
        if "respond-async" in request.headers.get("prefer", "").lower():
            return await _import_async(request, source, ing)
        counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        issues: list[dict[str, Any]] = []
        batch: list[tuple[int, bytes]] = []

        def run(lines: list[tuple[int, bytes]]) -> None:
            outs = list(ing.submit_ndjson([ln for _, ln in lines]))
            # a Bundle line yields several outcomes; line numbers are best-effort for those
            nonempty = [n for n, ln in lines if ln.strip()]
            for k, o in enumerate(outs):
                counts[o.status] += 1
                if o.status == "rejected" and len(issues) < 1000:
                    line_no = nonempty[k] if k < len(nonempty) and len(outs) == len(nonempty) else None
                    where = f"line {line_no}: " if line_no else ""
                    issues.append({"severity": "error", "code": ISSUE_CODE.get(o.http_status, "invalid"),
                                   "diagnostics": f"{where}{o.reason}"})  # fmt: skip

        async for n, line in _ndjson_lines(request, settings.gateway_max_line_bytes):
            batch.append((n, line))
            if len(batch) >= 500:
                await run_in_threadpool(run, batch)
                batch = []
        if batch:
            await run_in_threadpool(run, batch)
        summary = (f"accepted {counts['accepted']}, duplicates {counts['duplicate']}, "
                   f"rejected {counts['rejected']}")  # fmt: skip
        oo = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": summary}, *issues],
        }
        return fhir_response(oo, 200)

    async def _import_async(request: Request, source: str, ing: Ingestor) -> Response:
        """Bulk Data async pattern: spool the body to disk, ingest it in the background, 202 + Content-Location."""
        fh, path = gw.imports.spool_file()
        size = 0
        try:
            with fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    await run_in_threadpool(fh.write, chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        job = gw.imports.start(source, path, size, ing)
        status_url = str(request.url_for("import_status", job_id=job.id))
        return Response(status_code=202, headers={"Content-Location": status_url})

    @app.get("/fhir/$import-status/{job_id}", name="import_status")
    async def import_status(job_id: str, request: Request) -> Response:
        job = gw.imports.get(gw.source_of(request), job_id)
        if job is None:
            raise HttpProblem(404, "no such $import job (finished jobs are kept until DELETE or a gateway restart)")
        if job.status == "in-progress":
            return Response(status_code=202, headers={"X-Progress": job.progress(), "Retry-After": "1"})
        manifest = job.manifest(str(request.url))
        return Response(orjson.dumps(manifest), status_code=200, media_type="application/json")

    @app.delete("/fhir/$import-status/{job_id}")
    async def import_cancel(job_id: str, request: Request) -> Response:
        if not gw.imports.delete(gw.source_of(request), job_id):
            raise HttpProblem(404, "no such $import job")
        return Response(status_code=202)

    @app.post("/fhir/{rtype}")
    async def create(rtype: str, request: Request) -> Response:
        return await _one(rtype, None, request)

    @app.put("/fhir/{rtype}/{rid}")
    async def update(rtype: str, rid: str, request: Request) -> Response:
        return await _one(rtype, rid, request)

    async def _one(rtype: str, rid: str | None, request: Request) -> Response:
        source = gw.source_of(request)
        if rtype == "Bundle":
            return await _bundle(request)
        if not is_resource_type(rtype):
            raise HttpProblem(404, "unknown resource type in the URL")
        body = await _json_body(request)
        ing = gw.ingestor(source)
        try:
            obj = parse_json(body)
        except Rejection:
            out = await run_in_threadpool(ing.submit_resource, body)
            return outcome_response(out)
        if isinstance(obj, dict) and obj.get("resourceType") != rtype:
            raise HttpProblem(400, "resourceType of the body does not match the URL")
        if rid is not None and isinstance(obj, dict) and obj.get("id") != rid:
            raise HttpProblem(400, "id of the body does not match the URL")
        out = await run_in_threadpool(ing.submit_resource, obj if isinstance(obj, dict) else body)
        return outcome_response(out)

    @app.delete("/fhir/{rtype}/{rid}")
    async def delete(rtype: str, rid: str, request: Request) -> Response:
        source = gw.source_of(request)
        if not is_resource_type(rtype):
            raise HttpProblem(404, "unknown resource type in the URL")
        out = await run_in_threadpool(gw.ingestor(source).submit_delete, rtype, rid)
        return outcome_response(out)

    async def stow(request: Request) -> Response:
        from ingestion.dicom import parse_stow_multipart, stow_response

        source = gw.source_of(request)
        ctype = request.headers.get("content-type", "")
        if _media_type(request) != "multipart/related":
            raise HttpProblem(415, 'STOW-RS needs multipart/related; type="application/dicom"')
        body = await _read_body(request, settings.gateway_max_body_bytes)
        try:
            parts = parse_stow_multipart(ctype, body)
        except ValueError as err:
            raise HttpProblem(400, f"malformed multipart body: {err}") from None
        ing = gw.ingestor(source)
        referenced, failed = [], []
        for part in parts:
            out, extra = await run_in_threadpool(ing.submit_dicom_stow, part)
            entry = {"sop_class_uid": extra.get("sop_class_uid"), "sop_instance_uid": out.resource_id}
            if out.status == "rejected":
                failed.append(entry | {"failure_reason": extra.get("failure_reason", 0x0110)})
            else:
                referenced.append(entry)
        status = 200 if not failed else (409 if not referenced else 202)
        return Response(orjson.dumps(stow_response(referenced, failed)), status_code=status,
                        media_type="application/dicom+json")  # fmt: skip

    app.post("/dicomweb/studies")(stow)
    app.post("/dicomweb/studies/{study}")(stow)
    return app
