"""Crash safety: SIGKILL `careloop stream` at random points of a 20k-event run, restart it, and find the lake
exactly as a clean in-process application of the same events produces it — no loss, no duplicates. SIGTERM
finishes the batch and exits 0."""

from __future__ import annotations

import copy
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from careloop.duck import connect
from careloop.kafka import EventProducer
from careloop.settings import Settings
from transforms.lake_writer import LakeWriter
from transforms.pipeline import map_envelope
from transforms.vocab import Vocabulary

from .conftest import copy_lake
from .fhirdata import bundle_resources, envelope, fhir_event

CDM_TABLES = ("person", "death", "visit_occurrence", "condition_occurrence", "drug_exposure",
              "procedure_occurrence", "measurement", "observation", "observation_period", "image_occurrence",
              "provider", "care_site")  # fmt: skip


def workload(shared_data: Path, n: int) -> list[tuple[dict, str]]:
    """~n (resource, op) pairs: Synthea copies with new ids, then newer versions of some and deletes of others."""
    files = sorted((shared_data / "fhir" / "synthea_r4_bundles").glob("*_*.json"))
    base = [r for f in files for r in bundle_resources(f)]
    out: list[tuple[dict, str]] = []
    copy_no = 0
    while len(out) < n - 600:
        for r in base:
            r2 = copy.deepcopy(r)
            r2 = _suffix(r2, f"-{copy_no}")
            out.append((r2, "upsert"))
            if len(out) >= n - 600:
                break
        copy_no += 1
    obs = [r for r, _ in out if r["resourceType"] == "Observation" and "valueQuantity" in r]
    rng = random.Random(5)
    for r in rng.sample(obs, 300):
        newer = copy.deepcopy(r)
        newer["meta"] = {"versionId": "2", "lastUpdated": "2030-01-01T00:00:00Z"}
        newer["valueQuantity"] = dict(newer["valueQuantity"], value=42.0)
        out.append((newer, "upsert"))
    for r in rng.sample([r for r, _ in out if r["resourceType"] == "Condition"], 100):
        out.append(({"resourceType": "Condition", "id": r["id"], "subject": r["subject"], "meta": {}}, "delete"))
    return out


def _suffix(obj, sfx):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            ident = k == "id" or (k == "reference" and "/" in str(v)) or k == "uid"  # ids, references, DICOM UIDs
            if isinstance(v, str) and (ident or (k == "value" and v.startswith("urn:oid:"))):
                out[k] = v + sfx
            else:
                out[k] = _suffix(v, sfx)
        return out
    if isinstance(obj, list):
        return [_suffix(x, sfx) for x in obj]
    return obj


def lake_digest(settings: Settings) -> dict[str, tuple[int, str]]:
    con = connect(settings)
    out = {}
    for t in CDM_TABLES:
        rows = con.execute(f"SELECT * FROM omop.{t} ORDER BY ALL").fetchall()
        out[t] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()[:16])
    con.close()
    return out


STREAM_ARGS = ["stream", "--until-idle", "6", "--batch-size", "2000", "--max-wait-ms", "300", "--no-features"]


def stream_proc(env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "careloop.cli", *STREAM_ARGS]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_at_random_points_then_restart_gives_the_exact_lake(stream_settings, shared_data, vocab_lake,
                                                                     tmp_path) -> None:  # fmt: skip
    work = workload(shared_data, 20_000)
    with EventProducer(stream_settings) as p:
        events = [fhir_event(r, op=op) for r, op in work]
        for i in range(0, len(events), 5000):
            p.send_many(stream_settings.topic("fhir"), events[i : i + 5000])

    # reference: the same events applied in publish order, in-process
    ref = Settings(home=tmp_path / "ref")
    copy_lake(vocab_lake, ref)
    con = connect(ref)
    vocab = Vocabulary.from_lake(con)
    writer = LakeWriter(con)
    envs = [envelope(r, i, op=op) for i, (r, op) in enumerate(work)]
    for i in range(0, len(envs), 5000):
        writer.commit([map_envelope(e, vocab) for e in envs[i : i + 5000]])
    con.close()
    expected = lake_digest(ref)

    env = dict(os.environ, TMPDIR=str(tmp_path))
    rng = random.Random(11)
    kills = 0
    orphans: list[psutil.Process] = []
    for _ in range(3):
        proc = stream_proc(env)
        time.sleep(rng.uniform(4.0, 12.0))
        if proc.poll() is None:
            orphans.extend(psutil.Process(proc.pid).children(recursive=True))  # its mapping worker
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    # a SIGKILLed stream cannot stop its mapping worker: the worker notices and exits by itself
    _, alive = psutil.wait_procs(orphans, timeout=15)
    assert not alive, f"mapping workers outlived their killed stream process: {alive}"
    # SIGTERM: finishes its batch and exits cleanly
    proc = stream_proc(env)
    time.sleep(8)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    assert rc == 0, proc.stderr.read().decode()[-2000:]
    # and a final run to the end
    proc = stream_proc(env)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    assert kills >= 1
    assert lake_digest(stream_settings) == expected
    con = connect(stream_settings)
    consumed = con.execute("SELECT count(DISTINCT event_id) FROM omop.fhir_source_versions").fetchone()[0]
    runs = con.execute(
        "SELECT status, count(*) FROM lineage.runs WHERE job = 'transforms.stream' GROUP BY 1"
    ).fetchall()
    con.close()
    assert consumed > 0
    assert dict(runs).get("succeeded", 0) >= 2  # the SIGTERM run and the final run ended cleanly
