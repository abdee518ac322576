"""Opening the lineage store: the `lineage` schema of careloop's DuckLake."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from careloop.duck import connect, transaction
from careloop.settings import Settings

if TYPE_CHECKING:
    import duckdb


def schema_sql() -> str:
    return resources.files("lineage").joinpath("schema.sql").read_text()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the lineage tables and views if missing (idempotent, safe under concurrent first use)."""
    ddl = schema_sql()
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'lineage' AND table_name = 'ingest_events'"
    ).fetchone()[0]
    if exists:
        return
    transaction(con, lambda c: c.execute(ddl))


def open_store(settings: Settings, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection with the lake attached and the lineage schema present."""
    con = connect(settings, read_only=read_only)
    if not read_only:
        ensure_schema(con)
    return con
