from __future__ import annotations

import json

from careloop.settings import load_settings
from lineage import LineageWriter

from .cli_helpers import run_cli


def test_formats(tmp_path) -> None:
    env = {"CARELOOP_HOME": str(tmp_path)}
    q = "select 1 as a, 'x,y' as b union all select 2, NULL order by a"
    csv = run_cli("sql", q, "--format", "csv", env=env)
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines() == ["a,b", '1,"x,y"', "2,"]
    js = run_cli("sql", q, "-f", "json", env=env)
    assert json.loads(js.stdout) == [{"a": 1, "b": "x,y"}, {"a": 2, "b": None}]
    table = run_cli("sql", q, env=env)
    assert "x,y" in table.stdout and "NULL" in table.stdout and "(2 rows)" in table.stdout


def test_sql_error_prints_duckdb_message_and_fails(tmp_path) -> None:
    res = run_cli("sql", "select * from omop.no_such_table", env={"CARELOOP_HOME": str(tmp_path)})
    assert res.returncode == 1
    assert "no_such_table" in res.stderr and "does not exist" in res.stderr
    assert "Traceback" not in res.stderr


def test_lineage_and_omop_schemas_are_attached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CARELOOP_HOME", str(tmp_path))
    with LineageWriter(load_settings()) as w:
        w.start_run("unit-test", {"k": 1})
        w.edge("kafka", "careloop.fhir/0/7", "fhir", "Patient/p1/_history/1", "published_as")
        w.end_run()
    res = run_cli("sql", "select job, status from lineage.runs", "-f", "csv", env={"CARELOOP_HOME": str(tmp_path)})
    assert res.stdout.splitlines() == ["job,status", "unit-test,succeeded"]
    edges = run_cli(
        "sql", "select src_id, dst_id from lineage.edges", "-f", "csv", env={"CARELOOP_HOME": str(tmp_path)}
    )
    assert edges.stdout.splitlines()[1] == "careloop.fhir/0/7,Patient/p1/_history/1"
    schemas = run_cli(
        "sql",
        "select schema_name from duckdb_schemas() where database_name='lake' order by 1",
        "-f",
        "csv",
        env={"CARELOOP_HOME": str(tmp_path)},
    )
    assert {"omop", "lineage"} <= set(schemas.stdout.splitlines())
