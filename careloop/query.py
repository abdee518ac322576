"""`careloop sql`: SQL over the lake (schemas `omop`, `lineage`, and those later stages add)."""

from __future__ import annotations

from typing import Any

from careloop.duck import connect
from careloop.errors import CareloopError
from careloop.settings import Settings

BASE_SCHEMAS = ("omop", "lineage")


class SqlError(CareloopError):
    """DuckDB rejected the query; the message is DuckDB's own."""


def run_sql(settings: Settings, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    import duckdb

    from lineage.store import ensure_schema

    con = connect(settings)
    try:
        ensure_schema(con)
        con.execute("CREATE SCHEMA IF NOT EXISTS omop")
        con.execute("SET TimeZone = 'UTC'")
        try:
            cur = con.execute(query)
        except duckdb.Error as err:
            raise SqlError(str(err)) from None
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()
