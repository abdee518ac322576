"""Writing a simulation to a folder: FHIR (per-patient transaction Bundles or chunked NDJSON), DICOM files, and the
ground truth in a separate `truth/` folder. Patients are generated and written one at a time (bounded memory)."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from pydantic import BaseModel

from ingestion.simulator.dicom import render_dicom
from ingestion.simulator.generate import Delivery, PatientRecord, RealismRecord, generate_patient, iso
from ingestion.simulator.model import PatientTruth, SimulationConfig

Format = Literal["bundle", "ndjson"]
TRUTH_PATIENT_FIELDS = list(PatientTruth.__dataclass_fields__)
TRUTH_REALISM_FIELDS = list(RealismRecord.__dataclass_fields__)


class SimulationSummary(BaseModel):
    patients: int = 0
    resources: int = 0  # FHIR resource versions delivered (upserts, duplicates included)
    deletes: int = 0
    dicom_files: int = 0
    onsets: int = 0
    onsets_observed: int = 0
    by_type: dict[str, int] = {}
    realism: dict[str, int] = {}
    bytes_written: int = 0
    seconds: float = 0.0

    def add(self, rec: PatientRecord) -> None:
        self.patients += 1
        self.onsets += rec.truth.onset
        self.onsets_observed += rec.truth.onset_observed
        by_type, realism = Counter(self.by_type), Counter(self.realism)
        for d in rec.deliveries:
            if d.action == "upsert":
                self.resources += 1
                by_type[d.resource_type] += 1
            elif d.action == "delete":
                self.deletes += 1
            else:
                self.dicom_files += 1
        realism.update(n.kind for n in rec.realism)
        self.by_type, self.realism = dict(sorted(by_type.items())), dict(sorted(realism.items()))


def iter_records(config: SimulationConfig) -> Iterator[PatientRecord]:
    for i in range(config.patients):
        yield generate_patient(config, i)


def _csv_value(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else ("" if v is None else v)


class TruthWriter:
    """`truth/patients.csv`, `truth/realism.csv`, `truth/shifts.json`, `truth/summary.json` (never streamed)."""

    def __init__(self, root: Path, config: SimulationConfig) -> None:
        self.dir = root / "truth"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stack = ExitStack()
        self._pf = self._stack.enter_context(open(self.dir / "patients.csv", "w", newline=""))  # noqa: SIM115
        self._rf = self._stack.enter_context(open(self.dir / "realism.csv", "w", newline=""))  # noqa: SIM115
        self._p = csv.DictWriter(self._pf, TRUTH_PATIENT_FIELDS)
        self._r = csv.DictWriter(self._rf, TRUTH_REALISM_FIELDS)
        self._p.writeheader()
        self._r.writeheader()
        schedule = {
            "start": config.start.isoformat(), "months": config.months, "sites": config.sites, "seed": config.seed,
            "patients": config.patients, "realism": config.realism.model_dump(),
            "shifts": [{"index": i, "start_date": config.month_start(s.start).isoformat(),
                        **s.model_dump(by_alias=True)} for i, s in enumerate(config.shifts)],
        }  # fmt: skip
        (self.dir / "shifts.json").write_text(json.dumps(schedule, indent=2) + "\n")

    def add(self, rec: PatientRecord) -> None:
        self._p.writerow({k: _csv_value(v) for k, v in rec.truth.row().items()})
        for n in rec.realism:
            self._r.writerow({k: iso(v) if k in ("event_time", "delivered_at") else v for k, v in vars(n).items()})

    def close(self, summary: SimulationSummary) -> None:
        self._stack.close()
        (self.dir / "summary.json").write_text(summary.model_dump_json(indent=2) + "\n")


class _NdjsonSink:
    """`fhir/<Type>-NNNN.ndjson` chunks in delivery order; deletes as one-entry transaction Bundles in `_deleted-*`."""

    def __init__(self, root: Path, chunk_lines: int) -> None:
        self.root, self.chunk = root, chunk_lines
        self.files: dict[str, tuple[IO[bytes], int, int]] = {}  # name -> (file, chunk no, lines)
        self.bytes = 0

    def _write(self, name: str, line: bytes) -> None:
        f, no, n = self.files.get(name, (None, -1, self.chunk))
        if n >= self.chunk:
            if f is not None:
                f.close()
            no, n = no + 1, 0
            f = open(self.root / f"{name}-{no:04d}.ndjson", "wb")  # noqa: SIM115 - closed on rotation/close
        assert f is not None
        f.write(line)
        self.bytes += len(line)
        self.files[name] = (f, no, n + 1)

    def add(self, rec: PatientRecord) -> None:
        for d in rec.deliveries:
            if d.action == "upsert":
                self._write(d.resource_type, orjson.dumps(d.resource) + b"\n")
            elif d.action == "delete":
                self._write("_deleted", orjson.dumps(_delete_bundle([d])) + b"\n")

    def close(self) -> None:
        for f, _, _ in self.files.values():
            f.close()


def _delete_bundle(ds: list[Delivery]) -> dict[str, Any]:
    entries = [{"request": {"method": "DELETE", "url": f"{d.resource_type}/{d.logical_id}"}} for d in ds]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def bundle_waves(rec: PatientRecord) -> list[dict[str, Any]]:
    """Per-patient transaction Bundles: wave k holds the (k+1)-th delivery of each resource, so no Bundle names a
    resource twice (a FHIR transaction rule) and replaying the waves in order replays every version in order."""
    waves: list[list[Delivery]] = []
    seen: Counter[tuple[str, str]] = Counter()
    for d in rec.deliveries:
        if d.action == "dicom":
            continue
        key = (d.resource_type, d.logical_id)
        k = seen[key]
        seen[key] += 1
        while len(waves) <= k:
            waves.append([])
        waves[k].append(d)
    out = []
    for wave in waves:
        entries = []
        for d in wave:
            url = f"{d.resource_type}/{d.logical_id}"
            if d.action == "delete":
                entries.append({"request": {"method": "DELETE", "url": url}})
            else:
                entries.append({"fullUrl": f"urn:uuid:{d.logical_id}", "resource": d.resource,
                                "request": {"method": "PUT", "url": url}})  # fmt: skip
        out.append({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return out


def write_simulation(
    config: SimulationConfig,
    out: Path,
    fmt: Format = "bundle",
    *,
    chunk_lines: int = 50_000,
    dicom: bool = True,
    on_patient: Callable[[PatientRecord], None] | None = None,
) -> SimulationSummary:
    """Generate and write the whole simulation under `out` (fhir/, dicom/, truth/); returns the summary."""
    t0 = time.perf_counter()
    out = Path(out)
    fhir_dir = out / "fhir"
    fhir_dir.mkdir(parents=True, exist_ok=True)
    summary = SimulationSummary()
    truth = TruthWriter(out, config)
    nd = _NdjsonSink(fhir_dir, chunk_lines) if fmt == "ndjson" else None
    written = 0
    try:
        for rec in iter_records(config):
            if nd is not None:
                nd.add(rec)
            else:
                site_dir = fhir_dir / rec.truth.site
                site_dir.mkdir(exist_ok=True)
                for k, bundle in enumerate(bundle_waves(rec)):
                    data = orjson.dumps(bundle)
                    (site_dir / f"{rec.truth.patient_id}-{k}.json").write_bytes(data)
                    written += len(data)
            if dicom:
                for d in rec.deliveries:
                    if d.action == "dicom" and d.dicom is not None:
                        study_dir = out / "dicom" / rec.truth.site / d.dicom.study_uid
                        study_dir.mkdir(parents=True, exist_ok=True)
                        data = render_dicom(d.dicom)
                        (study_dir / f"{d.dicom.sop_uid}.dcm").write_bytes(data)
                        written += len(data)
            truth.add(rec)
            summary.add(rec)
            if on_patient is not None:
                on_patient(rec)
    finally:
        if nd is not None:
            nd.close()
            written += nd.bytes
        summary.bytes_written = written
        summary.seconds = round(time.perf_counter() - t0, 3)
        truth.close(summary)
    return summary
