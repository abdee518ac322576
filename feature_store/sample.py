"""Load an OMOP CSV export (for example the Eunomia sample) into the lake's `omop` schema.

Used by tests, benchmarks and demos to get realistic OMOP rows without running the whole ingestion path: the
columns of each CSV that exist in the CDM table are cast to the table's types, in one transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from careloop.duck import transaction

if TYPE_CHECKING:
    import duckdb

CLINICAL_TABLES = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "measurement",
    "observation",
    "procedure_occurrence",
    "payer_plan_period",
    "death",
)


def load_omop_csv(
    con: duckdb.DuckDBPyConnection,
    directory: str | Path,
    tables: tuple[str, ...] = CLINICAL_TABLES,
    *,
    vocabulary: bool = True,
) -> dict[str, int]:
    """Load `directory/<TABLE>.csv` into `omop.<table>` (and the vocabulary through transforms' loader)."""
    from transforms import ensure_omop_schema, load_vocabulary

    directory = Path(directory)
    ensure_omop_schema(con)
    counts: dict[str, int] = {}
    if vocabulary:
        counts |= load_vocabulary(con, directory)
    plans = []
    for table in tables:
        path = directory / f"{table.upper()}.csv"
        if not path.exists():
            continue
        header = {
            d[0].lower()
            for d in con.execute(
                "SELECT * FROM read_csv(?, header = true, all_varchar = true) LIMIT 0", [str(path)]
            ).description
        }
        cols = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = 'omop' AND table_name = ? ORDER BY column_index",
            [table],
        ).fetchall()
        select = ", ".join(
            (f"try_cast(nullif(src.\"{c}\", '') AS {t})" if c in header else "NULL") + f' AS "{c}"' for c, t in cols
        )
        plans.append((table, path, select))

    def body(c: duckdb.DuckDBPyConnection) -> None:
        for table, path, select in plans:
            c.execute(f"DELETE FROM omop.{table}")
            c.execute(
                f"INSERT INTO omop.{table} SELECT {select} FROM read_csv(?, header = true, all_varchar = true) src",
                [str(path)],
            )
            counts[table] = c.execute(f"SELECT count(*) FROM omop.{table}").fetchone()[0]

    transaction(con, body)
    return counts
