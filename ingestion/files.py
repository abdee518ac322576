"""Publishing files through the Ingestor (the core of `careloop publish`): FHIR JSON/NDJSON and DICOM files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from ingestion.core import Ingestor, Outcome
from ingestion.fhir_validate import Rejection, parse_json

FHIR_SUFFIXES = (".json", ".ndjson", ".jsonl")
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
NOT_DICOM_SUFFIXES = (".json", ".csv", ".md", ".txt", ".ndjson", ".py", ".xml", ".html")


def expand(paths: Iterable[Path], kind: str) -> list[Path]:
    """Files named directly, plus the matching files below folders (sorted, hidden files skipped)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
                    continue
                sfx = f.suffix.lower()
                if (kind == "fhir" and sfx in FHIR_SUFFIXES) or (kind == "dicom" and sfx not in NOT_DICOM_SUFFIXES):
                    out.append(f)
        else:
            out.append(p)
    return out


def publish_fhir_file(ing: Ingestor, path: Path) -> Iterator[Outcome]:
    if path.suffix.lower() in NDJSON_SUFFIXES:
        with path.open("rb") as fh:
            yield from ing.submit_ndjson(fh)
        return
    data = path.read_bytes()
    try:
        obj = parse_json(data)
    except Rejection:
        yield ing.submit_resource(data)  # dead-lettered with the parse error
        return
    if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
        yield from ing.submit_bundle(obj)
    else:
        yield ing.submit_resource(obj if isinstance(obj, dict) else data)


def publish_dicom_file(ing: Ingestor, path: Path) -> Iterator[Outcome]:
    yield ing.submit_dicom(path.read_bytes())


class Summary:
    """Counts by status and rejections by (error class, reason)."""

    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.reasons: Counter[tuple[str, str]] = Counter()

    def add(self, o: Outcome) -> None:
        self.status[o.status] += 1
        if o.status == "rejected":
            self.reasons[(o.error_class or "rejected", (o.reason or "")[:160])] += 1
