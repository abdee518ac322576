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


def test_lineage_rows_survive_a_retried_transaction(tmp_path) -> None:
    """A commit conflict makes `transaction()` re-run its body: buffered lineage must be written exactly once."""
    import duckdb

    from careloop.duck import transaction
    from lineage import open_store

    settings = load_settings(home=str(tmp_path))
    con = open_store(settings)
    writer = LineageWriter(settings, con=con)
    writer.edge("kafka", "t/0/1", "omop", "person/1", "mapped_to")
    attempts = []

    def body(c) -> None:
        writer.write_into(c)
        attempts.append(1)
        if len(attempts) == 1:
            raise duckdb.TransactionException("Transaction conflict: simulated first attempt")

    transaction(con, body)
    assert len(attempts) == 2
    assert con.execute("SELECT count(*) FROM lineage.edges").fetchone()[0] == 1
    assert writer.pending() == 0

    writer.edge("kafka", "t/0/2", "omop", "person/2", "mapped_to")

    def failing(c) -> None:
        writer.write_into(c)
        raise ValueError("sink failed")

    import pytest

    with pytest.raises(ValueError):
        transaction(con, failing)
    assert writer.pending() == 1  # kept for a later attempt, not lost
    writer.flush()
    assert con.execute("SELECT count(*) FROM lineage.edges").fetchone()[0] == 2
