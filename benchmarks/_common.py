"""Helpers shared by the benchmarks: where results go and how they are written."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from careloop.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p90": percentile(values, 0.9),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


@contextlib.contextmanager
def local_stack(name: str) -> Iterator[Settings]:
    """A throwaway CARELOOP_HOME and TMPDIR with its own Tansu broker, stopped by PID on exit, so a benchmark never
    touches an operator's state and leaves no process behind."""
    for key in [k for k in os.environ if k.startswith("CARELOOP_")]:
        del os.environ[key]
    from careloop.broker import LocalBroker
    from careloop.settings import Settings
    from careloop.topics import ensure_topics

    tmp = Path(tempfile.mkdtemp(prefix=f"careloop-bench-{name}-"))
    os.environ["TMPDIR"] = str(tmp)
    broker = LocalBroker(Settings(home=tmp / "broker", broker_start_timeout_s=30))
    state = broker.start()
    try:
        settings = Settings(home=tmp / "home", kafka_bootstrap=state.bootstrap, topic_prefix="bench.")
        ensure_topics(settings)
        yield settings
    finally:
        broker.stop()
