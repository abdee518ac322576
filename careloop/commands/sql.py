"""`careloop sql "SELECT …"`: query the OMOP lake and the lineage store."""

from __future__ import annotations

from enum import StrEnum

import typer


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def sql(
    query: str = typer.Argument(..., help="SQL; tables are omop.<table>, lineage.<table>, ..."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="output format"),
) -> None:
    """Run SQL over the OMOP lake (schema omop) and the lineage store (schema lineage)."""
    from careloop.query import run_sql
    from careloop.settings import load_settings

    columns, rows = run_sql(load_settings(), query)
    render(columns, rows, fmt)


def render(columns: list[str], rows: list[tuple], fmt: Format) -> None:
    import csv
    import sys

    from careloop.console import out

    if fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt is Format.json:
        import orjson

        sys.stdout.write(
            orjson.dumps(
                [dict(zip(columns, r, strict=True)) for r in rows], default=str, option=orjson.OPT_INDENT_2
            ).decode()
            + "\n"
        )
    else:
        from rich.table import Table

        table = Table(*columns, show_lines=False)
        for r in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in r))
        out.print(table)
        out.print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", style="dim")
