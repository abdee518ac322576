"""`careloop publish fhir|dicom PATH...`: files through the same validation and de-identification as the gateway.

Exit codes: 0 when every input was accepted, a duplicate or dead-lettered; 1 on operational failure (broker
unreachable, unreadable path); 2 with --strict when anything was rejected.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Publish FHIR or DICOM files through validation and de-identification.", no_args_is_help=True)

_SOURCE = typer.Option("file-publisher", "--source", help="source system stamped into every event")
_STRICT = typer.Option(False, "--strict", help="exit 2 when any input was rejected")
_SITE = typer.Option(None, "--site", help="site stamped into every event (default: CARELOOP_SITE)")


@app.command()
def fhir(
    paths: list[Path] = typer.Argument(..., help="Bundle/resource JSON, NDJSON files or folders"),
    source: str = _SOURCE,
    site: str = _SITE,
    strict: bool = _STRICT,
    workers: int = typer.Option(0, "--workers", min=0, max=32, help="R4B validation in N extra processes"),
) -> None:
    """Publish FHIR Bundles, single resources and NDJSON."""
    _run("fhir", paths, source, site, strict, workers)


@app.command()
def dicom(
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders"),
    source: str = _SOURCE,
    site: str = _SITE,
    strict: bool = _STRICT,
) -> None:
    """Publish DICOM files (de-identified copy to the object store, metadata event to Kafka)."""
    _run("dicom", paths, source, site, strict)


def _run(kind: str, paths: list[Path], source: str, site: str | None, strict: bool, workers: int = 0) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from careloop.console import err, out
    from careloop.errors import CareloopError
    from careloop.settings import load_settings
    from ingestion import Ingestor
    from ingestion.apikeys import SOURCE_NAME
    from ingestion.files import Summary, expand, publish_dicom_file, publish_fhir_file

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CareloopError(f"no such file or folder: {', '.join(missing)}")
    if not SOURCE_NAME.match(source):
        raise CareloopError("--source must be 1-64 letters, digits, '.', '_' or '-'")
    files = expand(paths, kind)
    settings = load_settings()
    summary = Summary()
    publish_file = publish_fhir_file if kind == "fhir" else publish_dicom_file
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[counts]}"))  # fmt: skip
    ing_ctx = Ingestor(settings, source_system=source, site=site, ack_each_call=False, validation_workers=workers)
    with ing_ctx as ing, Progress(*columns, console=err) as progress:
        task = progress.add_task(f"publish {kind}", total=len(files), counts="")
        for f in files:
            try:
                for o in publish_file(ing, f):
                    summary.add(o)
            except OSError as e:
                raise CareloopError(f"cannot read {f}: {e.strerror}") from None
            s = summary.status
            progress.update(task, advance=1, counts=f"{s['accepted']} ok, {s['duplicate']} dup, {s['rejected']} rej")
        ing.flush()
    table = Table("files", "accepted", "duplicates", "dead-lettered", title=f"careloop publish {kind}")
    s = summary.status
    table.add_row(str(len(files)), str(s["accepted"]), str(s["duplicate"]), str(s["rejected"]))
    out.print(table)
    if summary.reasons:
        reasons = Table("count", "error class", "reason", title="dead-lettered by reason")
        for (cls, reason), n in summary.reasons.most_common():
            reasons.add_row(str(n), cls, reason)
        out.print(reasons)
    if strict and s["rejected"]:
        err.print(f"[bold red]--strict:[/] {s['rejected']} input(s) were rejected")
        raise typer.Exit(2)
