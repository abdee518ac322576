"""The OMOP CDM v5.4 tables (plus the Medical Imaging extension and careloop's bookkeeping) in the lake's `omop`
schema, and loading an OHDSI Athena vocabulary export into it.

The DDL ships with the package (`omop_cdm_v54.sql`, written from the CDM v5.4 field specification) so that the
lake never depends on a checkout of the OHDSI repository at run time. DuckLake has no primary keys, indexes or
constraints: uniqueness of ids is kept by the writer (upserts keyed by FHIR logical id).
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from careloop.duck import transaction
from careloop.errors import CareloopError

if TYPE_CHECKING:
    import duckdb

SCHEMA = "omop"
DDL_FILES = ("omop_cdm_v54.sql", "careloop_omop.sql")
# Athena export files, in load order; the CDM table has the same name in lower case.
VOCABULARY_FILES = (
    "CONCEPT",
    "CONCEPT_RELATIONSHIP",
    "VOCABULARY",
    "DOMAIN",
    "CONCEPT_CLASS",
    "RELATIONSHIP",
    "CONCEPT_SYNONYM",
    "CONCEPT_ANCESTOR",
    "DRUG_STRENGTH",
)
REQUIRED_VOCABULARY_FILES = ("CONCEPT", "CONCEPT_RELATIONSHIP")


class VocabularyError(CareloopError):
    """The vocabulary folder is missing or not an Athena export."""


def ddl_sql() -> str:
    root = resources.files("transforms")
    return "\n".join(root.joinpath(name).read_text() for name in DDL_FILES)


def cdm_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ? "
        "ORDER BY table_name",
        [SCHEMA],
    ).fetchall()
    return [r[0] for r in rows]


def ensure_omop_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every `omop.*` table and view that is missing, in one transaction (idempotent, retried on conflicts
    with a concurrent first-time creation)."""
    if {"stream_status", "image_occurrence", "person", "concept"} <= set(cdm_tables(con)):
        return
    ddl = ddl_sql()
    transaction(con, lambda c: c.execute(ddl))


def _find(directory: Path, stem: str) -> Path | None:
    for path in sorted(directory.iterdir()):
        name = path.name.upper()
        if name in (f"{stem}.CSV", f"{stem}.CSV.GZ", f"{stem}.TSV", f"{stem}.TXT"):
            return path
    return None


def _delimiter(path: Path) -> str:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    if "\t" in header:
        return "\t"
    if "," in header:
        return ","
    raise VocabularyError(f"{path.name}: cannot tell the delimiter from its header {header[:80]!r}")


def _column_types(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = ? AND table_name = ? ORDER BY column_index",
            [SCHEMA, table],
        ).fetchall()
    ]


def _cast(col: str, typ: str) -> str:
    v = f"nullif(trim(src.\"{col}\"), '')"
    if typ == "DATE":  # Athena writes YYYYMMDD, ETL exports (Eunomia) write YYYY-MM-DD
        return f"coalesce(try_cast(try_strptime({v}, '%Y%m%d') AS DATE), try_cast({v} AS DATE))"
    if typ == "VARCHAR":
        return v
    return f"try_cast({v} AS {typ})"


def load_vocabulary(con: duckdb.DuckDBPyConnection, directory: str | Path) -> dict[str, int]:
    """Replace the vocabulary tables with an OHDSI Athena export (tab- or comma-separated, optionally gzipped).

    Everything happens in one transaction, so readers see either the old or the new vocabulary. Returns rows
    loaded per table.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise VocabularyError(f"vocabulary folder {directory} does not exist")
    found = {stem: _find(directory, stem) for stem in VOCABULARY_FILES}
    missing = [s for s in REQUIRED_VOCABULARY_FILES if found[s] is None]
    if missing:
        raise VocabularyError(f"{directory} is not an Athena export: missing {', '.join(m + '.csv' for m in missing)}")
    ensure_omop_schema(con)
    plans = []
    for stem, path in found.items():
        if path is None:
            continue
        delim = _delimiter(path)
        quote = '"' if delim == "," else ""  # Athena's TSV is unquoted (concept names may contain quotes)
        table = stem.lower()
        header = con.execute(
            "SELECT * FROM read_csv(?, delim = ?, quote = ?, header = true, all_varchar = true) LIMIT 0",
            [str(path), delim, quote],
        ).description
        present = {d[0].lower(): d[0] for d in header}
        cols = _column_types(con, table)
        select = ", ".join((_cast(present[c], t) if c in present else "NULL") + f' AS "{c}"' for c, t in cols)
        plans.append((table, path, delim, quote, select))

    def body(c: duckdb.DuckDBPyConnection) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table, path, delim, quote, select in plans:
            c.execute(f"DELETE FROM {SCHEMA}.{table}")
            c.execute(
                f"INSERT INTO {SCHEMA}.{table} SELECT {select} FROM read_csv(?, delim = ?, quote = ?, header = true,"
                " all_varchar = true, strict_mode = false) src",
                [str(path), delim, quote],
            )
            counts[table] = c.execute(f"SELECT count(*) FROM {SCHEMA}.{table}").fetchone()[0]
        return counts

    return transaction(con, body)
