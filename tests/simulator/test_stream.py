"""Stream realism as configured and recorded in the truth; bounded memory; the CLI."""

from __future__ import annotations

import csv
import tracemalloc
from collections import Counter

import orjson
import pytest

from careloop.cli import main
from ingestion.simulator import RealismConfig, SimulationConfig, generate_patient, write_simulation

REALISM = RealismConfig(late=0.08, out_of_order=0.1, update=0.1, delete=0.04, entered_in_error=0.04, duplicate=0.06)


def _within(observed: int, n: int, p: float) -> bool:
    sd = (n * p * (1 - p)) ** 0.5
    return abs(observed - n * p) <= 4.5 * sd + 1


def test_realism_shares_match_the_configuration():
    config = SimulationConfig(patients=60, sites=2, months=12, seed=13, realism=REALISM)
    kinds: Counter[str] = Counter()
    eligible: Counter[str] = Counter()
    for i in range(config.patients):
        rec = generate_patient(config, i)
        kinds.update(n.kind for n in rec.realism)
        firsts = [d for d in rec.deliveries if d.action == "upsert" and d.resource["meta"]["versionId"] == "1"
                  and "duplicate" not in d.tags and d.resource_type != "Patient"]  # fmt: skip
        eligible["all"] += len(firsts)
        eligible["obs"] += sum(d.resource_type == "Observation" for d in firsts)
        times = [d.delivered_at for d in rec.deliveries]
        assert times == sorted(times)
        # each resource's versions arrive in version order, and nothing follows its delete
        last: dict[str, int] = {}
        for d in rec.deliveries:
            if d.action == "delete":
                last[d.logical_id] = 10**6
            elif d.action == "upsert":
                v = int(d.resource["meta"]["versionId"])
                assert v >= last.get(d.logical_id, 0), d.logical_id
                last[d.logical_id] = v
    n, n_obs = eligible["all"], eligible["obs"]
    assert _within(kinds["late"], n, REALISM.late)
    assert _within(kinds["out_of_order"], n, (1 - REALISM.late) * REALISM.out_of_order)
    assert _within(kinds["duplicate"], n, REALISM.duplicate)
    assert _within(kinds["update"], n_obs, REALISM.update)
    assert kinds["entered_in_error"] > 0 and kinds["delete"] > 0


def test_truth_records_what_the_files_contain(tmp_path):
    config = SimulationConfig(patients=40, sites=2, months=12, seed=14, realism=REALISM)
    summary = write_simulation(config, tmp_path, "ndjson")
    with open(tmp_path / "truth" / "realism.csv", newline="") as f:
        notes = list(csv.DictReader(f))
    assert Counter(n["kind"] for n in notes) == Counter(summary.realism)
    versions: Counter[tuple[str, str]] = Counter()
    values: dict[tuple[str, str], object] = {}
    statuses: dict[tuple[str, str], str] = {}
    for path in (tmp_path / "fhir").glob("[A-Z]*.ndjson"):
        for line in path.read_bytes().splitlines():
            r = orjson.loads(line)
            key = (r["id"], r["meta"]["versionId"])
            versions[key] += 1
            values[key] = r.get("valueQuantity", {}).get("value")
            statuses[key] = r.get("status") or r.get("verificationStatus", {}).get("coding", [{}])[0].get("code")
    deleted = set()
    for path in (tmp_path / "fhir").glob("_deleted-*.ndjson"):
        for line in path.read_bytes().splitlines():
            deleted.add(orjson.loads(line)["entry"][0]["request"]["url"].split("/")[1])
    for n in notes:
        key = (n["logical_id"], n["version"])
        if n["kind"] == "duplicate":
            assert versions[key] == 2
        elif n["kind"] == "update":
            assert str(values[key]) == n["detail"].split(" -> ")[1]
        elif n["kind"] == "entered_in_error":
            assert statuses[key] == "entered-in-error"
        elif n["kind"] == "delete":
            assert n["logical_id"] in deleted
    assert len(deleted) == summary.deletes == sum(n["kind"] == "delete" for n in notes)


def _peak(n: int, tmp_path) -> int:
    tracemalloc.start()
    write_simulation(SimulationConfig(patients=n, sites=3, months=4, seed=1), tmp_path / str(n), "ndjson")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.slow
def test_memory_is_bounded_by_one_patient_not_the_population(tmp_path):
    small, large = _peak(200, tmp_path), _peak(800, tmp_path)
    assert large < 1.5 * small, (small, large)


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr()


def test_cli_writes_and_summarises(tmp_path, capsys):
    code, cap = _run(["simulate", "-n", "12", "-k", "2", "-m", "6", "--seed", "3", "--out", str(tmp_path / "o"),
                      "--format", "ndjson", "--shift", "covariate:site=B,start=2,age=+8"], capsys)  # fmt: skip
    out = cap.out
    assert code == 0
    assert "simulated 12 patients at 2 site(s) over 6 months" in out and "stream realism:" in out
    assert (tmp_path / "o" / "truth" / "shifts.json").exists()
    schedule = orjson.loads((tmp_path / "o" / "truth" / "shifts.json").read_bytes())
    assert schedule["shifts"][0]["kind"] == "covariate" and schedule["shifts"][0]["start_date"] == "2024-03-01"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shift", "covariate:site=B,start=x"], "shift 'covariate:site=B,start=x': start"),
        (["--shift", "device:site=E,start=1,model=M"], "site E does not exist"),
        ([], "choose exactly one of --out DIR or --publish"),
        (["--start", "2024-13-01", "--out", "x"], "--start"),
    ],
)
def test_cli_bad_input_is_one_clear_line(args, message, capsys, tmp_path):
    base = ["simulate", "-n", "2", "-k", "2", "-m", "3"]
    if "--out" not in args and args and args[0] == "--shift":
        args = [*args, "--out", str(tmp_path)]
    code, cap = _run(base + args, capsys)
    assert code == 1 and message in cap.err and "Traceback" not in cap.err


def test_publish_spool_yields_global_delivery_order(tmp_path):
    """The external sort behind --publish: buckets in order, each sorted, give one nondecreasing sequence."""
    from datetime import UTC, date, datetime, timedelta

    from ingestion.simulator.publish import _Spool

    spool = _Spool(tmp_path, date(2024, 1, 1))
    rng = __import__("random").Random(3)
    origin = datetime(2024, 1, 1, tzinfo=UTC)
    for p in range(50):
        for s in range(40):
            t = origin + timedelta(minutes=rng.randrange(60 * 24 * 120))
            spool.add({"t": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "p": p, "s": s}, t)
    seq = []
    for path in spool.buckets():
        rows = [orjson.loads(x) for x in path.read_bytes().splitlines()]
        seq.extend(sorted((r["t"], r["p"], r["s"]) for r in rows))
    assert len(seq) == 2000 and seq == sorted(seq)
