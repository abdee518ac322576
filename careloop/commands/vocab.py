"""`careloop vocab load DIR`: load an OHDSI Athena vocabulary export into the lake."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="OMOP vocabularies (OHDSI Athena exports).", no_args_is_help=True)
# the Eunomia subset next to the repository (../shared/data), used by tests and the demo
EUNOMIA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omop" / "eunomia_synthea27nj"


@app.command("load")
def load(
    directory: Path | None = typer.Argument(None, help="Athena export folder (default: the Eunomia subset)"),
) -> None:
    """Replace the vocabulary tables (concept, concept_relationship, ...) with an Athena export, in one transaction."""
    from careloop.console import out
    from careloop.duck import connect
    from careloop.settings import load_settings
    from transforms import load_vocabulary

    src = directory or EUNOMIA
    counts = load_vocabulary(connect(load_settings()), src)
    out.print(f"loaded {src}: " + ", ".join(f"{t} {n:,}" for t, n in counts.items() if n))
