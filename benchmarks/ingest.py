"""Ingestion throughput: validate + de-identify + vault + publish (+ lineage) vs. R4B validation alone, same run.

    .venv/bin/python benchmarks/ingest.py                # 12 Synthea bundles (~1.7k resources), ~1 min
    .venv/bin/python benchmarks/ingest.py --bundles 0    # all 54 files (~8.2k resources)
    .venv/bin/python benchmarks/ingest.py --profile      # plus a cProfile breakdown of the pipeline

Starts its own Tansu broker on a temporary home and stops it by PID. Writes benchmarks/results/ingest.json.
The DICOM part compares `Ingestor.submit_dicom` (file by file, in-process) and `Ingestor.submit_dicoms` (worker
processes, pipelined) -- PS3.15 de-identification + object store + vault + publish -- against plain `pydicom.dcmread`
of the same files in the same run (`--dicom-only` runs just that part).
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

MAIN_PHASES = (  # (label, module, class, attribute): timed in the main process (nested phases not subtracted)
    ("hash + seen-store + hand-off to workers", "ingestion.core", "Ingestor", "_prepare"),
    ("waiting for workers (idle)", "concurrent.futures._base", "Future", "result"),
    ("events from worker results (incl. wait)", "ingestion.core", "Ingestor", "_finish"),
    ("vault write (in-process items only)", "ingestion.vault", "RawVault", "flush"),
    ("identity + resource indexes", "ingestion.core", "IngestState", "index_resource_identifiers"),
    ("kafka hand-off", "careloop.kafka", "EventProducer", "send_raw"),
    ("kafka acks + seen-store + lineage buffer", "ingestion.core", "Ingestor", "_settle"),
    ("lineage flush (DuckLake)", "lineage.writer", "LineageWriter", "flush"),
)


def _phase_breakdown(settings: Any, bundles: list[dict[str, Any]]) -> dict[str, Any]:
    """Main-process seconds per phase of one default pipeline run, and its main-process CPU seconds."""
    import importlib

    spent: dict[str, float] = defaultdict(float)
    restore = []
    for label, module, cls, attr in MAIN_PHASES:
        owner = getattr(importlib.import_module(module), cls)
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
        total, _, cpu = _pipeline(settings, bundles, "bench-phases", False)
    finally:
        for owner, attr, original in restore:
            setattr(owner, attr, original)
    out: dict[str, Any] = {k: round(v, 3) for k, v in spent.items()}
    out["main process CPU"] = round(cpu, 3)
    out["wall total"] = round(total, 3)
    return out


def _worker_phases(settings: Any, bundles: list[dict[str, Any]]) -> dict[str, float]:
    """What one worker spends per phase, measured single-threaded in this process on the same resources."""
    from careloop.secrets import load_key
    from ingestion.core import CachingPseudonymizer
    from ingestion.fhir_deid import FhirDeidOptions, RefIndex
    from ingestion.fhir_item import Env, process_resource, validate_all
    from ingestion.vault import RawVault

    pseudo = CachingPseudonymizer(load_key(settings, "pseudonym"))
    env = Env(pseudo, FhirDeidOptions(), settings.max_message_bytes)
    vault = RawVault(settings)
    spent: dict[str, float] = defaultdict(float)
    for b in bundles:
        payload = orjson.dumps([e["resource"] for e in b["entry"]])
        t = time.process_time()
        resources = orjson.loads(payload)
        spent["parse chunk"] += time.process_time() - t
        t = time.process_time()
        checks = validate_all(resources)
        spent["R4B validation"] += time.process_time() - t
        urls = {e["fullUrl"]: (e["resource"]["resourceType"], e["resource"]["id"]) for e in b["entry"]}
        refs = RefIndex(urls, {})
        t = time.process_time()
        for r, c in zip(resources, checks, strict=True):
            process_resource(r, "sha256:" + "0" * 64, None, refs, env, validated=c, lookup=lambda h: None)
        spent["de-identification + event encoding"] += time.process_time() - t
        t = time.process_time()
        for i, r in enumerate(resources):
            vault.put(f"00000000-0000-5000-8000-{i:012d}", orjson.dumps(r))
        spent["vault encrypt"] += time.process_time() - t
        t = time.perf_counter()
        vault.flush()
        spent["vault write (wall)"] += time.perf_counter() - t
    vault.close()
    return {k: round(v, 3) for k, v in spent.items()}


def _validate_all(resources: list[dict[str, Any]]) -> float:
    from fhir.resources.R4B import get_fhir_model_class

    t = time.perf_counter()
    for r in resources:
        get_fhir_model_class(r["resourceType"]).model_validate(r)
    return time.perf_counter() - t


def _pipeline(settings: Any, bundles: list[dict[str, Any]], source: str, ack_each_call: bool,
              workers: int | None = None, pipelined: bool = True) -> tuple[float, int, float]:  # fmt: skip
    """(wall seconds, accepted, main-process CPU seconds) of one run; workers None = the default (one per CPU)."""
    from ingestion import Ingestor

    with Ingestor(settings, source_system=source, ack_each_call=ack_each_call, workers=workers) as ing:
        ing.warm_up()  # workers + lake connection, once per Ingestor (long-lived gateway / publish run): not timed
        t, c = time.perf_counter(), time.process_time()
        if pipelined:
            outs = [o for b in ing.submit_bundles(bundles) for o in b]
        else:
            outs = [o for b in bundles for o in ing.submit_bundle(b)]
        ing.flush()
        return time.perf_counter() - t, sum(o.status == "accepted" for o in outs), time.process_time() - c


def _workers() -> int:
    from careloop.settings import load_settings
    from ingestion.workers import default_workers

    return default_workers(load_settings().ingest_workers)


def _profile_top(prof: cProfile.Profile) -> str:
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    return buf.getvalue()


def _dcmread_all(files: list[bytes]) -> float:
    import pydicom

    t = time.perf_counter()
    for data in files:
        with contextlib.suppress(Exception):  # the malformed samples: reading them is work for the baseline too
            pydicom.dcmread(io.BytesIO(data))
    return time.perf_counter() - t


def _dicom(settings: Any, rounds: int) -> dict[str, Any]:
    """DICOM files/s through the Ingestor (PS3.15 de-identification + object store + vault + publish + lineage)
    against plain `pydicom.dcmread` of the same files, each pipeline run paired with a baseline run just before it.

    Modes: `in_process` = `submit_dicom` file by file without workers (what the gateway's STOW-RS does per part);
    `workers` = `submit_dicoms` (the batch path of `careloop publish dicom`: de-identification in the worker
    processes, pipelined with this process's vault/publish/lineage)."""
    from ingestion import Ingestor

    files = [p.read_bytes() for p in sorted((DATA / "dicom").glob("*.dcm"))]
    out: dict[str, Any] = {"files_per_round": len(files), "rounds": rounds}
    for mode, workers in (("in_process", 0), ("workers", None)):
        base = pipe = cpu = 0.0
        accepted = 0
        with Ingestor(settings, source_system=f"bench-dicom-{mode}", ack_each_call=False, workers=workers) as ing:
            ing.warm_up()
            if mode == "workers":  # worker processes import pydicom and the Annex E table on their first files
                ing.source = f"bench-dicom-{mode}-warm"
                list(ing.submit_dicoms(files * 2))
            else:
                ing.submit_dicom(files[0])
            ing.flush()
            for i in range(rounds):
                ing.source = f"bench-dicom-{mode}-{i}"  # another source per round, so rounds are not duplicates
                base += _dcmread_all(files)
                t, c = time.perf_counter(), time.process_time()
                outs = list(ing.submit_dicoms(files)) if mode == "workers" else [ing.submit_dicom(d) for d in files]
                ing.flush()
                pipe += time.perf_counter() - t
                cpu += time.process_time() - c
                accepted += sum(o.status == "accepted" for o in outs)
        n = rounds * len(files)
        out[mode] = {"files": n, "accepted": accepted, "pydicom_dcmread_files_per_s": round(n / base, 1),
                     "pipeline_files_per_s": round(n / pipe, 1), "ratio": round(base / pipe, 4),
                     "main_process_cpu_ms_per_file": round(cpu / n * 1000, 2)}  # fmt: skip
    out["workers"]["workers"] = _workers()
    out["deid_phase_cpu_ms_per_file_single_threaded"] = _dicom_phases(files, rounds)
    return out


def _dicom_phases(files: list[bytes], rounds: int) -> dict[str, float]:
    """Where de-identification spends its CPU, one file after another in this process (outermost calls only)."""
    from ingestion.core import CachingPseudonymizer
    from ingestion.dicom import DicomDeidOptions, DicomRejected, deid, read

    phases = [(read, "_parse", "parse (dcmread)"), (read, "_convert_all", "decode + check every value"),
              (read, "_check_pixel_data", "pixel data check"), (deid, "_clean", "Annex E element walk"),
              (deid, "_stamp", "method attributes"), (deid, "_write", "Part 10 write"),
              (deid, "metadata_json", "DICOM JSON metadata"), (deid, "occurred_at", "occurred_at"),
              (deid, "acquisition_attributes", "acquisition attributes")]  # fmt: skip
    spent: dict[str, float] = defaultdict(float)
    depth: dict[str, int] = defaultdict(int)
    restore = []
    for module, name, label in phases:
        original = getattr(module, name)

        def timed(*a: Any, _f: Any = original, _l: str = label, **k: Any) -> Any:
            depth[_l] += 1
            t = time.process_time()
            try:
                return _f(*a, **k)
            finally:
                depth[_l] -= 1
                if not depth[_l]:
                    spent[_l] += time.process_time() - t

        setattr(module, name, timed)
        restore.append((module, name, original))
    pseudo = CachingPseudonymizer(b"benchmark-key-0123456789abcdef01")
    options = DicomDeidOptions()

    def resolve(pid: str | None, issuer: str | None = None) -> str:
        return pseudo.person(pid or "unknown")

    try:
        t = time.process_time()
        for _ in range(rounds):
            for data in files:
                with contextlib.suppress(DicomRejected):
                    deid.deidentify_dicom(data, pseudo, resolve, options)
        total = time.process_time() - t
    finally:
        for module, name, original in restore:
            setattr(module, name, original)
    n = rounds * len(files)
    result = {k: round(v / n * 1000, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    result["total"] = round(total / n * 1000, 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=int, default=12, help="number of Synthea files (0 = all)")
    ap.add_argument("--dicom-rounds", type=int, default=3)
    ap.add_argument("--dicom-only", action="store_true", help="only the DICOM part (merged into an existing JSON)")
    ap.add_argument("--profile", action="store_true", help="profile the pipeline (slower; separate run)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ingest.json")
    args = ap.parse_args()

    if args.dicom_only:
        with local_stack("ingest-dicom") as settings:
            dicom = _dicom(settings, args.dicom_rounds)
        previous = orjson.loads(args.out.read_bytes()) if args.out.exists() else {}
        previous["dicom"] = dicom | {"load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(previous, option=orjson.OPT_INDENT_2))
        print(orjson.dumps(previous["dicom"], option=orjson.OPT_INDENT_2).decode())
        return
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
            pipe_i, accepted, _ = _pipeline(settings, bundles, f"bench-file-{i}", False)
            pairs.append((base_i / pipe_i, base_i, pipe_i))
        ratio, base, pipe = sorted(pairs)[1]
        base_1 = _validate_all(resources)
        single = _pipeline(settings, bundles, "bench-in-process", False, workers=0)[0]
        base_g = _validate_all(resources)
        gw = _pipeline(settings, bundles, "bench-gateway", True, pipelined=False)[0]
        n = len(resources)
        result: dict[str, Any] = {
            "resources": n,
            "accepted": accepted,
            "baseline_r4b_validation_per_s": round(n / base, 1),
            "pipeline_per_s": round(n / pipe, 1),
            "ratio_vs_validation": round(ratio, 3),
            "ratios_of_the_three_pairs": [round(p[0], 3) for p in pairs],
            "target_ratio": 0.8,
            "workers": _workers(),
            "in_process_no_workers_per_s": round(n / single, 1),
            "ratio_in_process_vs_validation": round(base_1 / single, 3),
            "gateway_mode_per_s": round(n / gw, 1),
            "ratio_gateway_mode_vs_validation": round(base_g / gw, 3),
            "notes": "pipeline = the default path for many Bundles (Ingestor.submit_bundles, one worker process per "
            "CPU started before timing): validate + de-identify + vault + publish (acks awaited) + seen-store + "
            "lineage flush; parse of the files excluded as in the baseline. gateway mode = submit_bundle one at a "
            "time waiting for Kafka acks after each (what POST /fhir does). Baseline = fhir.resources R4B "
            "model_validate of the same resources, single-threaded, same run.",
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
            },
        }
        result["main_process_phase_seconds"] = _phase_breakdown(settings, bundles)
        result["worker_phase_cpu_seconds_single_threaded"] = _worker_phases(settings, bundles)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            _pipeline(settings, bundles, "bench-profile", False)  # main process only (workers are not profiled)
            prof.disable()
            print(_profile_top(prof))
        result["dicom"] = _dicom(settings, args.dicom_rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
