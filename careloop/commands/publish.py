"""`careloop publish fhir|dicom PATH...`: files through the same validation and de-identification as the gateway.

Exit codes: 0 when every input was accepted, a duplicate or dead-lettered; 1 on operational failure (broker
unreachable, unreadable path); 2 with --strict when anything was rejected.

Runs of Bundle files go through `Ingestor.submit_bundles` and DICOM files through `Ingestor.submit_dicoms`: the
worker processes validate and de-identify the next input while this process vaults and publishes the current one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from ingestion import Ingestor, Outcome

app = typer.Typer(help="Publish FHIR or DICOM files through validation and de-identification.", no_args_is_help=True)

_SOURCE = typer.Option("file-publisher", "--source", help="source system stamped into every event")
_STRICT = typer.Option(False, "--strict", help="exit 2 when any input was rejected")
_SITE = typer.Option(None, "--site", help="site stamped into every event (default: CARELOOP_SITE)")
_WORKERS = typer.Option(
    None, "--workers", min=0, max=64, show_default="the ingest_workers setting (one per CPU)",
    help="worker processes for validation and de-identification; 0: everything in this process",
)  # fmt: skip


@app.command()
def fhir(
    paths: list[Path] = typer.Argument(..., help="Bundle/resource JSON, NDJSON files or folders"),
    source: str = _SOURCE,
    site: str = _SITE,
    strict: bool = _STRICT,
    workers: int | None = _WORKERS,
) -> None:
    """Publish FHIR Bundles, single resources and NDJSON."""
    _run("fhir", paths, source, site, strict, workers)


@app.command()
def dicom(
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders"),
    source: str = _SOURCE,
    site: str = _SITE,
    strict: bool = _STRICT,
    workers: int | None = _WORKERS,
) -> None:
    """Publish DICOM files (de-identified copy to the object store, metadata event to Kafka)."""
    _run("dicom", paths, source, site, strict, workers)


def _run(kind: str, paths: list[Path], source: str, site: str | None, strict: bool, workers: int | None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from careloop.console import err, out
    from careloop.errors import CareloopError
    from careloop.settings import load_settings
    from ingestion import Ingestor
    from ingestion.apikeys import SOURCE_NAME
    from ingestion.files import Summary, expand

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CareloopError(f"no such file or folder: {', '.join(missing)}")
    if not SOURCE_NAME.match(source):
        raise CareloopError("--source must be 1-64 letters, digits, '.', '_' or '-'")
    files = expand(paths, kind)
    settings = load_settings()
    summary = Summary()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[counts]}"))  # fmt: skip
    ing_ctx = Ingestor(settings, source_system=source, site=site, ack_each_call=False, workers=workers)
    with ing_ctx as ing, Progress(*columns, console=err) as progress:
        task = progress.add_task(f"publish {kind}", total=len(files), counts="")
        per_file = _fhir_outcomes(ing, files) if kind == "fhir" else _dicom_outcomes(ing, files)
        for outcomes in per_file:
            for o in outcomes:
                summary.add(o)
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


def _read(path: Path) -> bytes:
    from careloop.errors import CareloopError

    try:
        return path.read_bytes()
    except OSError as e:
        raise CareloopError(f"cannot read {path}: {e.strerror}") from None


def _dicom_outcomes(ing: Ingestor, files: list[Path]) -> Iterator[list[Outcome]]:
    """One outcome list per file, in order; files are read lazily as the workers take them."""
    for o in ing.submit_dicoms(_read(f) for f in files):
        yield [o]


def _fhir_outcomes(ing: Ingestor, files: list[Path]) -> Iterator[list[Outcome]]:
    """One outcome list per file, in order. Consecutive Bundle files are pipelined through `submit_bundles`; an NDJSON
    file, a single resource or a file that is not JSON ends the run and is submitted on its own."""
    from ingestion.fhir_validate import Rejection, parse_json
    from ingestion.files import NDJSON_SUFFIXES

    pending: list[Any] = []  # the file that ended a Bundle run: (kind, path, parsed or raw)

    def bundles(rest: Iterator[Path]) -> Iterable[dict[str, Any]]:
        for f in rest:
            if f.suffix.lower() in NDJSON_SUFFIXES:
                pending.append(("ndjson", f, None))
                return
            data = _read(f)
            try:
                obj = parse_json(data)
            except Rejection:
                pending.append(("raw", f, data))
                return
            if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
                yield obj
            else:
                pending.append(("resource", f, obj if isinstance(obj, dict) else data))
                return

    rest = iter(files)
    while True:
        yield from ing.submit_bundles(bundles(rest))
        if not pending:
            return
        kind, f, payload = pending.pop()
        if kind == "ndjson":
            try:
                with f.open("rb") as fh:
                    yield list(ing.submit_ndjson(fh))
            except OSError as e:
                from careloop.errors import CareloopError

                raise CareloopError(f"cannot read {f}: {e.strerror}") from None
        else:
            yield [ing.submit_resource(payload)]
