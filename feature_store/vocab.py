"""Vocabulary lookups of the derivation, cached on the DuckDB connection across stream batches.

A real OMOP vocabulary is millions of CONCEPT rows and tens of millions of CONCEPT_ANCESTOR rows; scanning them for
every micro-batch would make the stream hook's cost grow with the vocabulary instead of with the touched persons.
The vocabulary changes rarely, so the concept-set expansions (condition and drug-class concept sets plus every
descendant) are computed once per *vocabulary version* — the latest lake snapshot that changed a vocabulary table —
and concept names (race, ethnicity, payer, drug-class name patterns) are looked up only for concept ids not seen
before. The cache lives in temp tables of the connection itself (so it dies with the connection) and is keyed
by lake snapshot ids read from DuckLake's snapshot log, so a derivation at an older snapshot (a training set,
a backfill) is computed against the vocabulary of that snapshot. The same incremental read of the log records
the first snapshot that wrote each table, so that the derivation can skip tables that were still empty
(`never_written`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from careloop.duck import snapshot_changes

if TYPE_CHECKING:
    import duckdb

VOCAB_TABLES = ("concept", "concept_ancestor")
# DuckLake change kinds that only touch data of the listed tables; any other kind (a table created, dropped or
# altered, a schema change) conservatively counts as a vocabulary change.
DATA_CHANGES = {"tables_inserted_into", "tables_deleted_from", "inlined_insert", "inlined_delete"}
# Compaction rewrites files without changing a row: never a vocabulary change (the stream compacts after every batch,
# and counting it as structural cost a table-id lookup per derivation).
SAME_CONTENT = {"merge_adjacent"}
# Tables the derivation reads that are often empty for a whole lake (no imaging, no payer data): while the snapshot
# log shows no write to one, the derivation skips reading it (~10 ms of DuckLake metadata per read, measured).
SPARSE_TABLES = ("payer_plan_period", "image_occurrence")
# Change kinds whose items are table ids of tables written to (anything else names created objects).
NAMING_KINDS = {"schemas_created", "tables_created", "views_created"}
SET_TABLE = "_fs_voc_set"  # (concept_id, key, kind): concept sets expanded with their descendants
NAME_TABLE = "_fs_voc_name"  # (concept_id, concept_name, domain_id) of every concept id looked up so far


def _table_ids(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(table name, table id) of the vocabulary and sparse tables."""
    rows = con.execute(
        "SELECT table_name, table_id FROM ducklake_table_info('lake') "
        "WHERE table_name IN (SELECT unnest(?::VARCHAR[]))",
        [[*VOCAB_TABLES, *SPARSE_TABLES]],
    ).fetchall()
    return [(str(n), str(i)) for n, i in rows]


def _changes_vocab(changes: dict[str, list[str]] | None, ids: set[str]) -> bool:
    for kind, items in (changes or {}).items():
        if kind in SAME_CONTENT:
            continue
        if kind not in DATA_CHANGES:
            return True
        if any(str(i) in ids for i in items or []):
            return True
    return False


def _create(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""
        CREATE TEMP TABLE IF NOT EXISTS _fs_voc_meta(checked BIGINT, version BIGINT);
        CREATE TEMP TABLE IF NOT EXISTS _fs_voc_changes(snapshot_id BIGINT);
        CREATE TEMP TABLE IF NOT EXISTS _fs_voc_ids(table_name VARCHAR, table_id VARCHAR);
        CREATE TEMP TABLE IF NOT EXISTS _fs_voc_written(table_id VARCHAR, first_snapshot BIGINT);
        CREATE TEMP TABLE IF NOT EXISTS {SET_TABLE}(concept_id BIGINT, key VARCHAR, kind VARCHAR);
        CREATE TEMP TABLE IF NOT EXISTS {NAME_TABLE}(concept_id BIGINT, concept_name VARCHAR, domain_id VARCHAR);
        CREATE TEMP TABLE IF NOT EXISTS _fs_voc_seen(concept_id BIGINT);
    """)


def _values(rows: list[tuple[int, str]]) -> str:
    body = ", ".join(f"({int(c)}, '{k}')" for c, k in rows)
    return f"(VALUES {body}) AS t(concept_id, key)"


def _rebuild(con: duckdb.DuckDBPyConnection, snap: int, sets: dict[str, list[tuple[int, str]]]) -> None:
    at = f"AT (VERSION => {int(snap)})"
    con.execute(f"DELETE FROM {SET_TABLE}; DELETE FROM {NAME_TABLE}; DELETE FROM _fs_voc_seen;")
    has_ancestors = con.execute(f"SELECT count(*) FROM omop.concept_ancestor {at}").fetchall()[0][0] > 0
    for kind, rows in sets.items():
        if not rows:
            continue
        ids = _values(rows)
        anc = (
            f" UNION SELECT a.descendant_concept_id, t.key FROM {ids} JOIN (SELECT ancestor_concept_id, "
            f"descendant_concept_id FROM omop.concept_ancestor {at}) a ON a.ancestor_concept_id = t.concept_id"
            if has_ancestors
            else ""
        )
        expanded = f"SELECT t.concept_id, t.key FROM {ids}{anc}"
        con.execute(f"INSERT INTO {SET_TABLE} SELECT concept_id, key, '{kind}' FROM ({expanded})")


def ensure(con: duckdb.DuckDBPyConnection, snap: int, sets: dict[str, list[tuple[int, str]]]) -> None:
    """Make the cached concept-set expansions valid for lake snapshot `snap` (rebuilt when the vocabulary
    version of `snap` differs from the cached one). `sets`: kind -> [(concept_id, key)] of the concept sets."""
    _create(con)
    meta = con.execute("SELECT checked, version FROM _fs_voc_meta").fetchall()
    checked, version = meta[0] if meta else (-1, None)
    if snap > checked:
        log = snapshot_changes(con, checked, snap)
        # table ids only change with a non-data change, which counts as a vocabulary change anyway
        named = con.execute("SELECT table_name, table_id FROM _fs_voc_ids").fetchall()
        structural = any(k not in DATA_CHANGES | SAME_CONTENT for _, changes in log for k in (changes or {}))
        if structural or not named:
            named = _table_ids(con)
            con.execute("DELETE FROM _fs_voc_ids")
            if named:
                con.execute("INSERT INTO _fs_voc_ids SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[])",
                            [[n for n, _ in named], [i for _, i in named]])  # fmt: skip
        ids = {i for n, i in named if n in VOCAB_TABLES}
        hits = [int(s) for s, changes in log if _changes_vocab(changes, ids)]
        if hits:
            con.execute("INSERT INTO _fs_voc_changes SELECT unnest(?::BIGINT[])", [hits])
        _record_writes(con, log)
        checked = snap
    wanted = con.execute("SELECT max(snapshot_id) FROM _fs_voc_changes WHERE snapshot_id <= ?", [snap]).fetchall()
    want = wanted[0][0]
    if not meta or want != version:
        _rebuild(con, snap, sets)
        version = want
    con.execute("DELETE FROM _fs_voc_meta")
    con.execute("INSERT INTO _fs_voc_meta VALUES (?, ?)", [checked, version])


def lookup_names(con: duckdb.DuckDBPyConnection, snap: int, ids_sql: str) -> None:
    """Add to the name cache every concept id produced by `ids_sql` (one column) that was not looked up yet
    (one query when there is nothing new, the usual case in a stream)."""
    new = [
        int(r[0])
        for r in con.execute(
            f"SELECT DISTINCT id FROM ({ids_sql}) x(id) WHERE id IS NOT NULL "
            "AND id NOT IN (SELECT concept_id FROM _fs_voc_seen)"
        ).fetchall()
    ]
    if new:
        con.execute(
            f"INSERT INTO {NAME_TABLE} SELECT concept_id, concept_name, domain_id FROM omop.concept "
            f"AT (VERSION => {int(snap)}) WHERE concept_id IN (SELECT unnest(?::BIGINT[]))",
            [new],
        )
        con.execute("INSERT INTO _fs_voc_seen SELECT unnest(?::BIGINT[])", [new])


def _record_writes(con: duckdb.DuckDBPyConnection, log: list[tuple[int, dict[str, list[str]] | None]]) -> None:
    """The first snapshot that wrote each table (any change kind naming its id), from a slice of the log."""
    first: dict[str, int] = {}
    for snapshot, changes in log:
        for kind, items in (changes or {}).items():
            if kind not in NAMING_KINDS:
                for i in items or []:
                    first[str(i)] = min(first.get(str(i), snapshot), snapshot)
    if first:
        con.execute(
            "INSERT INTO _fs_voc_written SELECT * FROM (SELECT unnest(?::VARCHAR[]) AS t, unnest(?::BIGINT[]) AS s) "
            "WHERE t NOT IN (SELECT table_id FROM _fs_voc_written)",
            [list(first), list(first.values())],
        )


def never_written(con: duckdb.DuckDBPyConnection, table: str, snap: int) -> bool:
    """Whether omop.`table` (one of SPARSE_TABLES) had no write at or before lake snapshot `snap`, so it is empty
    there. Valid after `ensure(con, snap, ...)`; a table without a known id counts as written (it is read)."""
    row = con.execute(
        "SELECT count(*) = 0, (SELECT count(*) FROM _fs_voc_ids WHERE table_name = $t) > 0 FROM _fs_voc_written "
        "WHERE first_snapshot <= $s AND table_id IN (SELECT table_id FROM _fs_voc_ids WHERE table_name = $t)",
        {"t": table, "s": int(snap)},
    ).fetchall()[0]
    return bool(row[0] and row[1])
