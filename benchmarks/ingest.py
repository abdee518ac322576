"""Ingestion throughput: validate + de-identify + vault + publish (+ lineage) vs. R4B validation alone, same run.

    .venv/bin/python benchmarks/ingest.py                # 12 Synthea bundles (~1.7k resources), ~1 min
    .venv/bin/python benchmarks/ingest.py --bundles 0    # all 54 files (~8.2k resources)
    .venv/bin/python benchmarks/ingest.py --profile      # plus a cProfile breakdown of the pipeline

Starts its own Tansu broker on a temporary home and stops it by PID. Writes benchmarks/results/ingest.json.
The DICOM part compares `Ingestor.submit_dicom` (PS3.15 de-identification + object store + publish) against
plain `pydicom.dcmread` of the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import local_stack  # noqa: E402

DATA = REPO.parent / "shared" / "data"

PHASES = (  # (label, module, class or None, attribute) wrapped with a timer for the phase breakdown
    ("R4B validation", "ingestion.core", None, "validate_resource"),
    ("de-identification", "ingestion.core", None, "deidentify_resource"),
    ("content hashing", "ingestion.core", None, "content_hash"),
    ("vault encrypt", "ingestion.vault", "RawVault", "put"),
    ("vault write", "ingestion.vault", "RawVault", "flush"),
    ("kafka send (hand-off)", "careloop.kafka", "EventProducer", "send_async"),
    ("kafka acks + seen-store + lineage buffer", "ingestion.core", "Ingestor", "_settle"),
    ("lineage flush (DuckLake)", "lineage.writer", "LineageWriter", "flush"),
)


def _phase_breakdown(settings: Any, bundles: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per phase of one pipeline run (nested phases are not subtracted)."""
    import importlib

    spent: dict[str, float] = defaultdict(float)
    restore = []
    for label, module, cls, attr in PHASES:
        owner = importlib.import_module(module)
        owner = getattr(owner, cls) if cls else owner
        original = getattr(owner, attr)

        def timed(*a: Any, _f: Any = original, _l: str = label, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_l] += time.perf_counter() - t

        setattr(owner, attr, timed)
        restore.append((owner, attr, original))
    try:
        total, _ = _pipeline(settings, bundles, "bench-phases", False)
    finally:
        for owner, attr, original in restore:
            setattr(owner, attr, original)
    out = {k: round(v, 3) for k, v in spent.items()}
    out["total"] = round(total, 3)
    return out


def _validate_all(resources: list[dict[str, Any]]) -> float:
    from fhir.resources.R4B import get_fhir_model_class

    t = time.perf_counter()
    for r in resources:
        get_fhir_model_class(r["resourceType"]).model_validate(r)
    return time.perf_counter() - t


def _pipeline(settings: Any, bundles: list[dict[str, Any]], source: str, ack_each_call: bool,
              workers: int = 0) -> tuple[float, int]:  # fmt: skip
    from ingestion import Ingestor

    with Ingestor(settings, source_system=source, ack_each_call=ack_each_call, validation_workers=workers) as ing:
        if workers:  # start the workers and import the model classes before timing
            warm = [dict(e["resource"]) for b in bundles[:2] for e in b["entry"]] * workers
            for fut, _ in list(ing._pool.submit(warm).values()):
                fut.result()
        t = time.perf_counter()
        n = 0
        for b in bundles:
            outs = ing.submit_bundle(b)
            n += sum(o.status == "accepted" for o in outs)
        ing.flush()
        return time.perf_counter() - t, n


def _profile_top(prof: cProfile.Profile) -> str:
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    return buf.getvalue()


def _dicom(settings: Any, rounds: int) -> dict[str, Any]:
    import pydicom

    from ingestion import Ingestor

    files = [p.read_bytes() for p in sorted((DATA / "dicom").glob("*.dcm"))]
    t = time.perf_counter()
    for _ in range(rounds):
        for data in files:
            with contextlib.suppress(Exception):  # the malformed samples: reading them is work for the baseline too
                pydicom.dcmread(io.BytesIO(data))
    base = time.perf_counter() - t
    accepted = 0
    with Ingestor(settings, source_system="bench-dicom", ack_each_call=False) as ing:
        ing.submit_dicom(files[0])  # warm-up: object store, producer, pydicom/dicognito imports
        ing.flush()
        t = time.perf_counter()
        for i in range(rounds):
            ing.source = f"bench-dicom-{i}"  # another source per round, so rounds are not duplicates
            accepted += sum(ing.submit_dicom(d).status == "accepted" for d in files)
        ing.flush()
        elapsed = time.perf_counter() - t
    n = rounds * len(files)
    return {"files": n, "accepted": accepted, "pydicom_dcmread_files_per_s": round(n / base, 1),
            "pipeline_files_per_s": round(n / elapsed, 1), "ratio": round(base / elapsed, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=int, default=12, help="number of Synthea files (0 = all)")
    ap.add_argument("--dicom-rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profile the pipeline (slower; separate run)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ingest.json")
    args = ap.parse_args()

    with local_stack("ingest") as settings:
        files = sorted((DATA / "fhir" / "synthea_r4_bundles").glob("*.json"))
        files = files[: args.bundles] if args.bundles else files
        bundles = [orjson.loads(f.read_bytes()) for f in files]
        resources = [e["resource"] for b in bundles for e in b["entry"]]
        # warm-up: model classes, schema caches, producer connection, lake catalog
        _validate_all(resources[:300])
        _pipeline(settings, bundles[:1], "warmup", True)

        # The machine is shared: measure baseline and pipeline back to back, three times, and use the median of
        # the per-pair ratios (a quiet baseline against a disturbed pipeline run would say nothing).
        pairs = []
        for i in range(3):
            base_i = _validate_all(resources)
            pipe_i, accepted = _pipeline(settings, bundles, f"bench-file-{i}", False)
            pairs.append((base_i / pipe_i, base_i, pipe_i))
        ratio, base, pipe = sorted(pairs)[1]
        gw, _ = _pipeline(settings, bundles, "bench-gateway", True)
        base_p = _validate_all(resources)
        pooled = _pipeline(settings, bundles, "bench-pool", False, workers=2)[0]
        n = len(resources)
        result: dict[str, Any] = {
            "resources": n,
            "accepted": accepted,
            "baseline_r4b_validation_per_s": round(n / base, 1),
            "pipeline_per_s": round(n / pipe, 1),
            "ratio_vs_validation": round(ratio, 3),
            "ratios_of_the_three_pairs": [round(p[0], 3) for p in pairs],
            "target_ratio": 0.8,
            "gateway_mode_per_s": round(n / gw, 1),
            "pipeline_2_validation_workers_per_s": round(n / pooled, 1),
            "ratio_2_workers_vs_single_core_validation": round(base_p / pooled, 3),
            "notes": "pipeline = parse excluded; validate + de-identify + vault + publish (acks awaited) + seen-store "
            "+ lineage flush; gateway mode waits for Kafka acks after every Bundle",
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        }
        result["phase_seconds"] = _phase_breakdown(settings, bundles)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            _pipeline(settings, bundles, "bench-profile", False)
            prof.disable()
            print(_profile_top(prof))
        result["dicom"] = _dicom(settings, args.dicom_rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
