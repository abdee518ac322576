"""Record-level feature lineage in bulk: `omop table/row -> feature view/entity/time -> training set`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from careloop.duck import transaction
from careloop.settings import Settings

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


_schema_ready: set[str] = set()


def insert_edges(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    edges: pa.Table,
    *,
    job: str,
    params: Mapping[str, Any] | None = None,
    relation: str = "derived",
    run_id: str | None = None,
) -> int:
    """Insert `edges` (src_kind, src_id, dst_kind, dst_id) into `lineage.edges` in one transaction, as one
    set-based INSERT (a row-by-row writer would be the bottleneck at training-set sizes)."""
    from lineage import LineageWriter, ensure_schema, insert_edges_from

    key = str(settings.home_dir)
    if key not in _schema_ready:  # checking costs a catalog query (~0.1 s): once per lake and process
        ensure_schema(con)
        _schema_ready.add(key)
    writer = LineageWriter(settings, con=con)
    if run_id is None:
        run_id = writer.start_run(job, dict(params or {}), flush=False)

    def body(c: duckdb.DuckDBPyConnection) -> int:
        writer.write_into(c)
        insert_edges_from(
            c,
            "SELECT src_kind, src_id, dst_kind, dst_id, $relation, NULL FROM _fs_edges",
            {"relation": relation},
            run_id=run_id,
        )
        return edges.num_rows

    con.register("_fs_edges", edges)
    try:
        return transaction(con, body)
    finally:
        con.unregister("_fs_edges")
