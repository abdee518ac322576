"""Composite Beam PTransforms: parse -> route by resource type -> map to OMOP rows (vocabulary, units) -> data
quality. Runner-agnostic; the stream runner and the backfill both run `FhirToOmop`.

Elements are event envelopes (dicts or JSON lines): {topic, partition, offset, key, headers, value}. Output is one
dict per input event: {"src", "status", "reason", "rows"} (see `transforms.mapping.map_fhir`).
"""

from __future__ import annotations

import glob
import hashlib
import os
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
            | "Decode" >> beam.Map(lambda e: orjson.loads(e) if isinstance(e, (str, bytes)) else e)
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


def map_envelope(env: Any, vocab: Vocabulary) -> dict[str, Any]:
    """The element-wise path of `FhirToOmop` for one envelope, as a plain function (used by `MapChunks`)."""
    src, value = source_of(orjson.loads(env) if isinstance(env, (str, bytes)) else env)
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
    def __init__(self, path: str, chunk: int) -> None:
        self.path, self.chunk = path, chunk

    def process(self, _: Any) -> Iterable[list[bytes]]:
        buf: list[bytes] = []
        with open(self.path, "rb") as fh:
            for line in fh:
                if line.strip():
                    buf.append(line)
                    if len(buf) >= self.chunk:
                        yield buf
                        buf = []
        if buf:
            yield buf


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


def run_batch(envelopes: list[dict[str, Any]], workdir: str, vocab: Vocabulary, *, runner: Any = None,
              chunk: int = 500) -> list[dict[str, Any]]:  # fmt: skip
    """One micro-batch through Beam: the envelopes go to a JSON-lines file that one impulse + DoFn reads in chunks
    (no `beam.Create` at volume, no per-batch file-sink finalization; STACK.md); results come back as files."""
    from apache_beam.options.pipeline_options import PipelineOptions

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "batch.jsonl")
    out_dir = os.path.join(workdir, "out")
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "*")):
        os.unlink(stale)
    with open(path, "wb") as fh:
        for env in envelopes:
            fh.write(orjson.dumps(env, default=str))
            fh.write(b"\n")
    try:
        with beam.Pipeline(runner=runner or local_runner(), options=PipelineOptions(["--no_pipeline_type_check"])) as p:
            (
                p
                | "Impulse" >> beam.Impulse()
                | "ReadChunks" >> beam.ParDo(_ReadChunks(path, chunk))
                | "ToOmop" >> MapChunks(vocab)
                | "WriteChunks" >> beam.ParDo(_WriteChunks(out_dir))
            )
        results: list[dict[str, Any]] = []
        for f in glob.glob(os.path.join(out_dir, "*.jsonl")):
            with open(f, "rb") as fh:
                results.extend(orjson.loads(line) for line in fh if line.strip())
            os.unlink(f)
        return results
    finally:
        os.unlink(path)
