"""`careloop backfill PATH... [-- --runner FlinkRunner ...]`: the stream's transforms over FHIR files, bounded."""

from __future__ import annotations

import typer


def backfill(
    ctx: typer.Context,
    paths: list[str] = typer.Argument(..., help="FHIR Bundle/resource JSON or NDJSON files, or folders"),
    source_system: str = typer.Option("backfill", "--source-system", help="recorded in lineage and ingest state"),
    commit_size: int = typer.Option(20_000, "--commit-size", min=1, help="events per lake transaction"),
) -> None:
    """Validate + de-identify the files (as the gateway does), map them to OMOP with Beam and commit to the lake.

    Beam pipeline options go after `--` (e.g. `-- --runner FlinkRunner --flink_master host:8081`); the default
    runner is Beam's in-process FnApiRunner."""
    from careloop.console import out
    from careloop.settings import load_settings
    from transforms.backfill import backfill as run

    files = [p for p in paths if not p.startswith("--")]
    args = [p for p in paths if p.startswith("--")] + list(ctx.args)
    report = run(load_settings(), files, pipeline_args=args, source_system=source_system, commit_size=commit_size)
    out.print(f"{report.files} files, {report.events} events ({report.rejected} rejected at ingestion), "
              f"{report.rows_written} OMOP rows, {report.skipped} unmapped resources, {report.dead_letters} dead "
              f"letters, {report.stale} unchanged, {report.seconds:.1f} s")  # fmt: skip
    for t, n in sorted(report.rows_by_table.items()):
        out.print(f"  omop.{t}: {n}")
