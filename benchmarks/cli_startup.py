"""`careloop --help` whole-process wall time vs `python -c pass` (the interpreter's own floor), same run.

Target (issue 2): median < 1.0 s. Run: .venv/bin/python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary, write_result

CARELOOP = str(Path(sys.executable).with_name("careloop"))


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    runs = ap.parse_args().runs
    timed([CARELOOP, "--help"])  # warm the file cache once
    base, cli, sub = [], [], []
    for _ in range(runs):  # interleaved so both see the same machine load
        base.append(timed([sys.executable, "-c", "pass"]))
        cli.append(timed([CARELOOP, "--help"]))
        sub.append(timed([CARELOOP, "broker", "--help"]))
    result = {
        "target_median_s": 1.0,
        "baseline_python_c_pass_s": summary(base),
        "careloop_help_s": summary(cli),
        "careloop_broker_help_s": summary(sub),
    }
    result["overhead_over_baseline_median_s"] = (
        result["careloop_help_s"]["median"] - result["baseline_python_c_pass_s"]["median"]
    )
    result["meets_target"] = result["careloop_help_s"]["median"] < 1.0
    path = write_result("cli_startup", result)
    print(
        f"careloop --help median {result['careloop_help_s']['median']:.3f} s "
        f"(python -c pass {result['baseline_python_c_pass_s']['median']:.3f} s) -> {path}"
    )


if __name__ == "__main__":
    main()
