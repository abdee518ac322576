"""Simulator throughput and memory: `careloop simulate --out` in a child process (resources/s, peak RSS), then a
validation pass over every written resource (R4B + Eunomia code coverage). Baselines measured in the same run on a
sample of the same resources: generation only, stdlib json.dumps and orjson.dumps.

    .venv/bin/python benchmarks/simulate.py            # 1,000 patients x 24 months (about 2 minutes)
    .venv/bin/python benchmarks/simulate.py --full     # 10,000 patients x 24 months (>= 1M resources)
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import write_result  # noqa: E402
from ingestion.simulator.codes import collect_codings  # noqa: E402


def validate_all(fhir_dir: Path, eunomia: set[tuple[str, str]], limit: int | None) -> dict[str, object]:
    import orjson
    from fhir.resources.R4B import get_fhir_model_class

    from ingestion.simulator.codes import VOCABULARY_SYSTEMS

    n = bad = in_vocab = checked = 0
    errors: list[str] = []
    t0 = time.perf_counter()
    for path in sorted(fhir_dir.glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            r = orjson.loads(line)
            try:
                get_fhir_model_class(r["resourceType"]).model_validate(r)
            except Exception as exc:  # count and keep a few messages
                bad += 1
                if len(errors) < 5:
                    errors.append(f"{r['resourceType']}: {str(exc)[:200]}")
            codes: list[tuple[str, str]] = []
            collect_codings(r, codes)
            for s, c in codes:
                if s in VOCABULARY_SYSTEMS:
                    checked += 1
                    in_vocab += (VOCABULARY_SYSTEMS[s], c) in eunomia
            n += 1
            if limit and n >= limit:
                break
    secs = time.perf_counter() - t0
    return {"validated": n, "invalid": bad, "valid_share": (n - bad) / n if n else None, "errors": errors,
            "validate_per_s": round(n / secs), "codes_checked": checked,
            "codes_in_eunomia_share": round(in_vocab / checked, 5) if checked else None}  # fmt: skip


def baselines(patients: int, months: int, sites: int, sample: int) -> dict[str, object]:
    """On the same kind of resources: generation only, then json.dumps vs orjson.dumps of exactly those."""
    import orjson

    from ingestion.simulator import SimulationConfig, generate_patient

    cfg = SimulationConfig(patients=patients, sites=sites, months=months, seed=0)
    t0 = time.perf_counter()
    resources = []
    for i in range(min(sample, patients)):
        resources.extend(d.resource for d in generate_patient(cfg, i).deliveries if d.resource is not None)
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    nbytes = sum(len(json.dumps(r, separators=(",", ":")).encode()) + 1 for r in resources)
    stdlib = time.perf_counter() - t0
    t0 = time.perf_counter()
    nbytes_o = sum(len(orjson.dumps(r)) + 1 for r in resources)
    fast = time.perf_counter() - t0
    n = len(resources)
    return {"sample_patients": min(sample, patients), "sample_resources": n,
            "generate_only_per_s": round(n / gen), "json_dumps_per_s": round(n / stdlib),
            "orjson_dumps_per_s": round(n / fast), "json_bytes": nbytes, "orjson_bytes": nbytes_o}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="10,000 patients (>= 1M resources)")
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--validate-limit", type=int, default=0, help="validate at most this many resources (0 = all)")
    ap.add_argument("--keep", type=Path, default=None, help="write the output here and keep it")
    args = ap.parse_args()
    patients = args.patients or (10_000 if args.full else 1_000)

    tmp = tempfile.TemporaryDirectory(prefix="careloop-bench-sim-")
    out = args.keep or Path(tmp.name) / "out"
    cli = Path(sys.executable).parent / "careloop"
    cmd = [str(cli), "simulate", "--patients", str(patients), "--months", str(args.months), "--sites",
           str(args.sites), "--seed", "0", "--out", str(out), "--format", "ndjson",
           "--shift", f"covariate:site=B,start={args.months // 2},age=+8,bmi=+2",
           "--shift", f"device:site=A,start={args.months // 4},model=Ysio Max II",
           "--shift", f"assay:site=C,start={3 * args.months // 8},analyte=glucose,unit=mmol/L"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"simulator failed: {proc.stderr.strip().splitlines()[-1:]}")
    wall = time.perf_counter() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = json.loads((out / "truth" / "summary.json").read_text())

    eunomia_csv = REPO.parent / "shared" / "data" / "omop" / "eunomia_synthea27nj" / "CONCEPT.csv"
    with open(eunomia_csv, newline="") as f:
        eunomia = {(r["vocabulary_id"], r["concept_code"]) for r in csv.DictReader(f)}
    validation = validate_all(out / "fhir", eunomia, args.validate_limit or None)
    base = baselines(patients, args.months, args.sites, sample=300)
    du = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    result = {
        "mode": "full" if args.full else "default",
        "command": " ".join(["careloop", *cmd[1:]]).replace(str(out), "OUT"),
        "patients": patients,
        "months": args.months,
        "resources": summary["resources"],
        "deletes": summary["deletes"],
        "dicom_files": summary["dicom_files"],
        "by_type": summary["by_type"],
        "realism": summary["realism"],
        "onsets": summary["onsets"],
        "wall_seconds_incl_startup": round(wall, 2),
        "simulator_seconds": summary["seconds"],
        "resources_per_s": round(summary["resources"] / summary["seconds"]),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "output_mb": round(du / 2**20, 1),
        "validation": validation,
        "baseline": base,
        "notes": "resources_per_s is end to end (generate + orjson + write NDJSON + render DICOM + truth CSV); "
        "baseline rates are per resource on a 300-patient sample of the same generator.",
    }
    path = write_result("simulate", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("by_type",)}, indent=2))
    print(f"wrote {path}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
