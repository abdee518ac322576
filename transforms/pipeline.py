"""Composite Beam PTransforms: parse -> route by resource type -> map to OMOP rows (vocabulary, units) -> data
quality. Runner-agnostic; the stream runner and the backfill both run `FhirToOmop`.

Elements are event envelopes (dicts or JSON lines): {topic, partition, offset, key, headers, value}. Output is one
dict per input event: {"src", "status", "reason", "rows"} (see `transforms.mapping.map_fhir`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import orjson

from transforms.mapping import DEADLETTER_CHECKS, MAPPED_TYPES, map_dicom, map_fhir
from transforms.vocab import Vocabulary

OTHER = "other"
DICOM = "dicom"


def payload_hash(value: Any) -> str:
    return hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str), digest_size=16).hexdigest()


def source_of(env: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Event envelope -> (source metadata, payload). The metadata is what versioning and lineage need."""
    h = env.get("headers") or {}
    value = env.get("value")
    etype = str(h.get("event_type") or "")
    topic = str(env.get("topic") or "")
    is_dicom = etype.startswith("dicom") or topic.endswith("dicom")
    meta = value.get("meta") if isinstance(value, dict) and isinstance(value.get("meta"), dict) else {}
    if is_dicom:
        rtype = "DicomInstance"
        rid = value.get("sop_instance_uid") if isinstance(value, dict) else None
    else:
        parts = etype.split(".")
        rtype = (value.get("resourceType") if isinstance(value, dict) else None) or (parts[1] if len(parts) > 2
                                                                                       else None)  # fmt: skip
        rid = value.get("id") if isinstance(value, dict) else None
    op = "delete" if etype.endswith(".delete") else "upsert"
    vid = meta.get("versionId")
    src = {
        "kind": "dicom" if is_dicom else "fhir",
        "op": op,
        "resource_type": rtype,
        "resource_id": None if rid is None else str(rid),
        "person_key": env.get("key"),
        "version_id": None if vid is None else str(vid),
        "last_updated": meta.get("lastUpdated"),
        "event_id": h.get("event_id"),
        "content_hash": h.get("content_hash") or payload_hash(value),
        "occurred_at": h.get("occurred_at"),
        "kafka_ref": f"{topic}/{env.get('partition')}/{env.get('offset')}" if topic else None,
        "seq": (env.get("partition") or 0, env.get("offset") or 0),
    }
    return src, value


class ParseEvents(beam.PTransform):
    """JSON lines or dicts -> (src, payload)."""

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return (
            pcoll
            | "Decode" >> beam.Map(lambda e: decode_envelope(e) if isinstance(e, (str, bytes)) else e)
            | ("Source" >> beam.Map(source_of))
        )


class _Route(beam.DoFn):
    def process(self, item: tuple[dict[str, Any], Any]) -> Iterable[Any]:
        src = item[0]
        tag = DICOM if src["kind"] == "dicom" else (src["resource_type"] if src["resource_type"] in MAPPED_TYPES
                                                       else OTHER)  # fmt: skip
        yield beam.pvalue.TaggedOutput(tag, item)


class RouteByType(beam.PTransform):
    """Split by resource type, so each mapping is its own step (and its own counter in a runner's UI)."""

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return pcoll | beam.ParDo(_Route()).with_outputs(*MAPPED_TYPES, DICOM, OTHER)


class _MapFhir(beam.DoFn):
    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab

    def process(self, item: tuple[dict[str, Any], Any]) -> Iterable[dict[str, Any]]:
        src, value = item
        yield (map_dicom if src["kind"] == "dicom" else map_fhir)(src, value, self.vocab)


class MapToOmop(beam.PTransform):
    """(src, payload) -> routed by resource type -> mapped results, one mapping step per resource type."""

    def __init__(self, vocab: Vocabulary) -> None:
        super().__init__()
        self.vocab = vocab

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        routed = pcoll | "Route" >> RouteByType()
        parts = [routed[t] | f"Map{t}" >> beam.ParDo(_MapFhir(self.vocab)) for t in (*MAPPED_TYPES, DICOM, OTHER)]
        return parts | "Merge" >> beam.Flatten()


def check_quality(result: dict[str, Any]) -> dict[str, Any]:
    """Record-level severity: a row whose flags include a dead-letter check is not loaded (reason kept)."""
    if result["status"] != "mapped":
        return result
    fatal = [f for r in result["rows"] for f in r["flags"] if f[0] in DEADLETTER_CHECKS]
    if fatal:
        return {**result, "status": "deadletter", "check": fatal[0][0], "reason": fatal[0][1], "rows": []}
    return result


class CheckQuality(beam.PTransform):
    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | beam.Map(check_quality)


class FhirToOmop(beam.PTransform):
    """The whole element-wise path from event envelopes to OMOP row sets."""

    def __init__(self, vocab: Vocabulary) -> None:
        super().__init__()
        self.vocab = vocab

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Parse" >> ParseEvents() | "Map" >> MapToOmop(self.vocab) | "Quality" >> CheckQuality()


def local_runner() -> Any:
    """Beam's in-process runner, named explicitly (the default runner tries to download Prism; STACK.md)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def run_files(inputs: str, out_prefix: str, vocab: Vocabulary, *, runner: Any = None,
              options: Any = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run `FhirToOmop` over JSON-lines envelope files (a glob) into JSON-lines results; return the results."""
    from apache_beam.options.pipeline_options import PipelineOptions

    opts = options or PipelineOptions(["--no_pipeline_type_check"])
    with beam.Pipeline(runner=runner or local_runner(), options=opts) as p:
        (
            p
            | "Read" >> beam.io.ReadFromText(inputs)
            | "ToOmop" >> FhirToOmop(vocab)
            | "Encode" >> beam.Map(lambda r: orjson.dumps(r).decode())
            | "Write" >> beam.io.WriteToText(out_prefix, file_name_suffix=".jsonl")
        )
    results = []
    for path in sorted(glob.glob(out_prefix + "*.jsonl")):
        with open(path, "rb") as fh:
            results.extend(orjson.loads(line) for line in fh if line.strip())
        os.unlink(path)
    return results


HEADER_FIELDS = ("event_id", "event_type", "content_hash", "occurred_at", "source_system", "site")


def frame(head: dict[str, Any], value: bytes | None) -> bytes:
    """One envelope as a line: the JSON of its metadata, a tab, then the Kafka value's bytes *as received*.

    The stream never decodes a value just to encode it again for Beam: the DoFn parses it once. orjson never
    writes a raw tab or newline, so the first tab ends the metadata and the newline ends the record; a value
    carrying raw newlines (pretty-printed by a foreign producer) is re-encoded, and one that is not JSON at all is
    marked so that it becomes a dead letter with the parser's reason instead of breaking the batch.
    """
    if value is None:
        value = b"null"
    elif b"\n" in value:
        try:
            value = orjson.dumps(orjson.loads(value))
        except orjson.JSONDecodeError as err:
            head = {**head, "invalid_value": f"value is not valid JSON: {err}"}
            value = b"null"
    return orjson.dumps(head, default=str) + b"\t" + value


def encode_envelope(env: dict[str, Any]) -> bytes:
    """A decoded envelope dict (tests, backfill) as a framed line."""
    return frame({k: v for k, v in env.items() if k != "value"}, orjson.dumps(env.get("value"), default=str))


def decode_envelope(line: bytes | str) -> dict[str, Any]:
    """A framed line (or a plain JSON-lines envelope) -> envelope dict; an unparseable value is marked, not raised."""
    data = line.encode() if isinstance(line, str) else line
    data = data.rstrip(b"\r\n")
    head, tab, value = data.partition(b"\t")
    if tab:
        try:
            env = orjson.loads(head)
        except orjson.JSONDecodeError:
            env = None
        if isinstance(env, dict):
            if "invalid_value" not in env:
                try:
                    env["value"] = orjson.loads(value)
                except orjson.JSONDecodeError as err:
                    env["invalid_value"] = f"value is not valid JSON: {err}"
            return env
    return orjson.loads(data)


def map_envelope(env: Any, vocab: Vocabulary) -> dict[str, Any]:
    """The element-wise path of `FhirToOmop` for one envelope, as a plain function (used by `MapChunks`)."""
    env = decode_envelope(env) if isinstance(env, (str, bytes)) else env
    src, value = source_of(env)
    if env.get("invalid_value"):
        return {"src": src, "status": "deadletter", "check": "invalid_resource", "reason": env["invalid_value"],
                "rows": []}  # fmt: skip
    return check_quality((map_dicom if src["kind"] == "dicom" else map_fhir)(src, value, vocab))


class MapChunks(beam.PTransform):
    """`FhirToOmop` on chunks (lists) of envelopes: the same functions, one Beam element per few hundred events.

    The in-process runner costs ~0.3 ms per element per step; the stream's micro-batches would spend most of
    their time in that overhead, so the stream hands Beam chunks. The backfill uses the per-element form.
    """

    def __init__(self, vocab: Vocabulary) -> None:
        super().__init__()
        self.vocab = vocab

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        vocab = self.vocab
        return pcoll | "MapChunk" >> beam.Map(lambda chunk: [map_envelope(e, vocab) for e in chunk])


class _ReadChunks(beam.DoFn):
    """A batch file -> chunks of lines; `indexed`: (index of the chunk's first line in the batch, lines)."""

    def __init__(self, path: str, chunk: int, indexed: bool = False) -> None:
        self.path, self.chunk, self.indexed = path, chunk, indexed

    def process(self, _: Any) -> Iterable[Any]:
        buf: list[bytes] = []
        start = 0
        with open(self.path, "rb") as fh:
            for line in fh:
                if line.strip():
                    buf.append(line)
                    if len(buf) >= self.chunk:
                        yield (start, buf) if self.indexed else buf
                        start += len(buf)
                        buf = []
        if buf:
            yield (start, buf) if self.indexed else buf


class MapPrepared(beam.PTransform):
    """(first index, chunk of envelopes) -> the chunk's results in columnar form (`transforms.lake_writer.Prepared`):
    the row building the lake commit needs happens here, in the mapping process, not in the committing one."""

    def __init__(self, vocab: Vocabulary) -> None:
        super().__init__()
        self.vocab = vocab

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        from transforms.lake_writer import prepare

        vocab = self.vocab
        return pcoll | "MapPrepared" >> beam.Map(lambda c: prepare([map_envelope(e, vocab) for e in c[1]], c[0]))


class _WritePrepared(beam.DoFn):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, prepared: Any) -> Iterable[str]:
        import pickle
        import uuid

        path = os.path.join(self.out_dir, f"{uuid.uuid4().hex}.pkl")
        with open(path + ".tmp", "wb") as fh:
            pickle.dump(prepared, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(path + ".tmp", path)
        yield path


class _WriteChunks(beam.DoFn):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, results: list[dict[str, Any]]) -> Iterable[str]:
        import uuid

        path = os.path.join(self.out_dir, f"{uuid.uuid4().hex}.jsonl")
        with open(path + ".tmp", "wb") as fh:
            for r in results:
                fh.write(orjson.dumps(r))
                fh.write(b"\n")
        os.replace(path + ".tmp", path)
        yield path


def write_batch(envelopes: list[dict[str, Any]] | list[bytes], path: str) -> None:
    """A micro-batch as the framed JSON-lines file `run_batch_file` reads."""
    with open(path, "wb") as fh:
        for env in envelopes:
            fh.write(env if isinstance(env, bytes) else encode_envelope(env))
            fh.write(b"\n")


def run_batch_file(path: str, out_dir: str, vocab: Vocabulary, *, runner: Any = None, chunk: int = 500,
                   columnar: bool = False) -> list[str]:  # fmt: skip
    """Beam over one batch file: one impulse + a DoFn reading it in chunks (no `beam.Create` at volume, no per-batch
    file-sink finalization; STACK.md). Returns the result files it wrote into `out_dir`: JSON lines of result
    dicts, or (`columnar`) pickled `Prepared` chunks for `read_prepared`."""
    from apache_beam.options.pipeline_options import PipelineOptions

    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "*")):
        os.unlink(stale)
    with beam.Pipeline(runner=runner or local_runner(), options=PipelineOptions(["--no_pipeline_type_check"])) as p:
        chunks = p | "Impulse" >> beam.Impulse() | "ReadChunks" >> beam.ParDo(_ReadChunks(path, chunk, columnar))
        if columnar:
            _ = chunks | "ToOmop" >> MapPrepared(vocab) | "WritePrepared" >> beam.ParDo(_WritePrepared(out_dir))
        else:
            _ = chunks | "ToOmop" >> MapChunks(vocab) | "WriteChunks" >> beam.ParDo(_WriteChunks(out_dir))
    return sorted(glob.glob(os.path.join(out_dir, "*.pkl" if columnar else "*.jsonl")))


def read_prepared(paths: list[str]) -> Any:
    """Pickled `Prepared` chunks of one batch -> one `Prepared` (files removed once read)."""
    import pickle

    from transforms.lake_writer import merge

    parts = []
    for f in paths:
        with open(f, "rb") as fh:
            parts.append(pickle.load(fh))
        os.unlink(f)
    return merge(parts)


def read_results(paths: list[str]) -> list[dict[str, Any]]:
    """Result files -> result dicts; the files are removed once read."""
    results: list[dict[str, Any]] = []
    for f in paths:
        with open(f, "rb") as fh:
            results.extend(orjson.loads(line) for line in fh if line.strip())
        os.unlink(f)
    return results


def run_batch(envelopes: list[dict[str, Any]] | list[bytes], workdir: str, vocab: Vocabulary, *, runner: Any = None,
              chunk: int = 500, columnar: bool = False) -> Any:  # fmt: skip
    """One micro-batch through Beam in this process: envelopes (dicts or framed lines) -> result dicts, or
    (`columnar`) one `Prepared` batch for `LakeWriter.commit`."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "batch.jsonl")
    write_batch(envelopes, path)
    try:
        files = run_batch_file(path, os.path.join(workdir, "out"), vocab, runner=runner, chunk=chunk,
                               columnar=columnar)  # fmt: skip
        return read_prepared(files) if columnar else read_results(files)
    finally:
        os.unlink(path)


# -- one long-lived pipeline per mapping process ------------------------------------------------------------------
_FEEDS: dict[str, FeedMapper] = {}


class _FeedRequest:
    def __init__(self, path: str, out_dir: str) -> None:
        self.path, self.out_dir = path, out_dir
        self.paths: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Feed(beam.DoFn):
    """The source of the long-lived pipeline: batch files from the owning `FeedMapper`'s queue, read in chunks;
    after a batch's last chunk, its end marker (downstream DoFns of the fused stage have handled every chunk by the
    time the in-process runner resumes this generator)."""

    def __init__(self, key: str, chunk: int) -> None:
        self.key, self.chunk = key, chunk

    def process(self, _: Any) -> Iterable[tuple[int, int, list[bytes] | None]]:
        feed = _FEEDS[self.key]
        while True:
            rid = feed.requests.get()
            if rid is None:
                return
            req = feed.pending[rid]
            try:
                yield from ((rid, start, lines) for start, lines in _ReadChunks(req.path, self.chunk, True).process(0))
            except Exception as err:  # an unreadable batch file fails that batch, not the pipeline
                req.error = err
            yield rid, -1, None


class _FeedMap(beam.DoFn):
    def __init__(self, key: str, vocab: Vocabulary) -> None:
        self.key, self.vocab = key, vocab

    def process(self, item: tuple[int, int, list[bytes] | None]) -> Iterable[None]:
        from transforms.lake_writer import prepare

        rid, start, lines = item
        req = _FEEDS[self.key].pending[rid]
        if lines is None:
            req.done.set()
            return
        if req.error is not None:
            return
        try:
            prepared = prepare([map_envelope(e, self.vocab) for e in lines], start)
            req.paths.extend(_WritePrepared(req.out_dir).process(prepared))
        except Exception as err:
            req.error = err
        return
        yield  # a generator DoFn that emits nothing


class FeedMapper:
    """`run_batch_file(..., columnar=True)` without building a Beam pipeline per batch: ONE pipeline on the
    in-process runner runs for the life of the mapping process, its source DoFn fed batch files through a queue.

    Building and translating a pipeline costs the FnApiRunner ~0.1-0.2 s CPU per batch here (options parsing,
    DoFn signature inspection, proto translation) — a fifth of a 10k batch's mapping and most of a small one's.
    Same DoFns' work (read chunks -> map -> `prepare` -> pickled files); in-process only (the feed is a Python
    queue), which is what the stream's mapping worker runs. If the pipeline thread dies, `map_file` raises.
    """

    def __init__(self, vocab: Vocabulary, chunk: int = 5000) -> None:
        import queue
        import uuid

        self.key = uuid.uuid4().hex
        self.requests: queue.Queue[int | None] = queue.Queue()
        self.pending: dict[int, _FeedRequest] = {}
        self._next = 0
        self.failed: BaseException | None = None
        _FEEDS[self.key] = self
        self._thread = threading.Thread(target=self._run, args=(vocab, chunk), name="careloop-beam-feed",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _run(self, vocab: Vocabulary, chunk: int) -> None:
        from apache_beam.options.pipeline_options import PipelineOptions

        try:
            with beam.Pipeline(runner=local_runner(), options=PipelineOptions(["--no_pipeline_type_check"])) as p:
                _ = (
                    p
                    | "Impulse" >> beam.Impulse()
                    | "FeedChunks" >> beam.ParDo(_Feed(self.key, chunk))
                    | "ToOmop" >> beam.ParDo(_FeedMap(self.key, vocab))
                )
        except BaseException as err:
            self.failed = err
        finally:
            if self.failed is None:
                self.failed = RuntimeError("the mapping pipeline stopped")
            for req in list(self.pending.values()):
                req.error = req.error or self.failed
                req.done.set()

    def map_file(self, path: str, out_dir: str) -> list[str]:
        """Map one batch file into `out_dir`; returns the pickled `Prepared` chunk files (for `read_prepared`)."""
        if self.failed is not None:
            raise RuntimeError(f"the mapping pipeline failed: {self.failed!r}")
        os.makedirs(out_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(out_dir, "*")):
            os.unlink(stale)
        rid, self._next = self._next, self._next + 1
        req = self.pending[rid] = _FeedRequest(path, out_dir)
        self.requests.put(rid)
        while not req.done.wait(0.5):
            if not self._thread.is_alive():
                req.error = req.error or self.failed or RuntimeError("the mapping pipeline stopped")
                break
        del self.pending[rid]
        if req.error is not None:
            raise req.error
        return sorted(req.paths)

    def close(self) -> None:
        self.requests.put(None)
        self._thread.join(timeout=30)
        _FEEDS.pop(self.key, None)
