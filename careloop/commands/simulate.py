"""`careloop simulate`: the EHR simulator (synthetic multi-site FHIR + DICOM with ground truth and shifts)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path

import typer


class OutFormat(StrEnum):
    bundle = "bundle"
    ndjson = "ndjson"


SHIFT_HELP = (
    "inject a shift (repeatable): KIND:site=X,start=MONTH,... e.g. covariate:site=B,start=12,age=+8,bmi=+2 | "
    "device:site=A,start=6,model=NewScanner[,manufacturer=..,gain=1.2] | "
    "assay:site=B,start=9,analyte=glucose[,unit=mmol/L,offset=5,scale=1.0] | prevalence:site=C,start=12,factor=1.5 | "
    "concept:site=A,start=12,hba1c_weight=0.5 | coding:site=B,start=6,from=CODE,to=CODE"
)


def simulate(
    patients: int = typer.Option(1000, "--patients", "-n", min=1, help="number of patients"),
    sites: int = typer.Option(3, "--sites", "-k", min=1, max=26, help="number of sites (A, B, C, ...)"),
    months: int = typer.Option(24, "--months", "-m", min=1, max=240, help="simulated months"),
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="random seed (same seed -> identical output)"),
    start: str = typer.Option("2024-01-01", "--start", help="first simulated day (YYYY-MM-DD)"),
    shift: list[str] = typer.Option([], "--shift", help=SHIFT_HELP),
    out: Path | None = typer.Option(None, "--out", help="write files to this folder (fhir/, dicom/, truth/)"),
    fmt: OutFormat = typer.Option(OutFormat.bundle, "--format", help="FHIR file layout for --out"),
    publish: bool = typer.Option(False, "--publish", help="publish through the ingestion gateway core"),
    rate: float = typer.Option(
        0.0, "--rate", min=0, help="events per second when publishing (0 = as fast as possible)"
    ),
    truth: Path | None = typer.Option(None, "--truth", help="with --publish: folder for the ground truth"),
    late: float = typer.Option(0.02, min=0, max=1, help="share of resources delivered 1-14 days late"),
    out_of_order: float = typer.Option(0.03, min=0, max=1, help="share delivered 1-12 h late (out of order)"),
    update: float = typer.Option(0.03, min=0, max=1, help="share of Observations corrected later"),
    delete: float = typer.Option(0.005, min=0, max=1, help="share of resources deleted later"),
    entered_in_error: float = typer.Option(0.005, min=0, max=1, help="share marked entered-in-error later"),
    duplicate: float = typer.Option(0.01, min=0, max=1, help="share delivered twice"),
) -> None:
    """EHR simulator: synthetic patients, sites, scanners and shifts, with a ground truth kept apart."""
    from careloop.console import err
    from careloop.console import out as console
    from careloop.errors import CareloopError
    from ingestion.simulator import RealismConfig, SimulationConfig, parse_shift

    if (out is None) == (not publish):
        raise CareloopError("choose exactly one of --out DIR or --publish")
    try:
        start_date = datetime.strptime(start, "%Y-%m-%d").date()
    except ValueError:
        raise CareloopError(f"--start {start!r} is not a date (YYYY-MM-DD)") from None
    shifts = tuple(parse_shift(s, sites, months) for s in shift)
    config = SimulationConfig(
        patients=patients, sites=sites, months=months, seed=seed, start=start_date, shifts=shifts,
        realism=RealismConfig(late=late, out_of_order=out_of_order, update=update, delete=delete,
                              entered_in_error=entered_in_error, duplicate=duplicate),
    )  # fmt: skip
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=err, transient=False) as progress:
        if out is not None:
            from ingestion.simulator import write_simulation

            task = progress.add_task("simulating", total=patients, info="")
            counter = {"resources": 0}

            def tick(rec) -> None:  # type: ignore[no-untyped-def]
                counter["resources"] += len(rec.deliveries)
                progress.update(task, advance=1, info=f"{counter['resources']:,} deliveries")

            summary = write_simulation(config, out, fmt.value, on_patient=tick)
            where = f"to {out}"
        else:
            from ingestion.simulator.publish import publish_simulation

            task = progress.add_task("publishing", total=None, info="")

            def tick_pub(done: int, total: int | None, info: str) -> None:
                progress.update(task, completed=done, total=total, info=info)

            summary = publish_simulation(config, rate=rate, truth_dir=truth, on_progress=tick_pub)
            where = "through the ingestion core"
    rps = summary.resources / summary.seconds if summary.seconds else 0.0
    console.print(
        f"simulated {summary.patients:,} patients at {sites} site(s) over {months} months {where}: "
        f"{summary.resources:,} resource versions ({rps:,.0f}/s), {summary.deletes:,} deletes, "
        f"{summary.dicom_files:,} DICOM files, {summary.onsets:,} onsets ({summary.onsets_observed:,} observed)"
    )
    console.print("stream realism: " + ", ".join(f"{k}={v:,}" for k, v in summary.realism.items()))
    if getattr(summary, "outcomes", None):
        console.print("ingestion outcomes: " + ", ".join(f"{k}={v:,}" for k, v in summary.outcomes.items()))
    console.print(f"ground truth: {getattr(summary, 'truth_dir', '') or Path(out or '.') / 'truth'}")
