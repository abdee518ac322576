"""`careloop stream`: Kafka -> Beam -> OMOP lake, continuously (or until idle); `careloop stream status`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Stream FHIR/DICOM events from Kafka into the OMOP lake.", invoke_without_command=True,
                  no_args_is_help=False)  # fmt: skip


@app.callback(invoke_without_command=True)
def stream(
    ctx: typer.Context,
    until_idle: float | None = typer.Option(None, "--until-idle", help="exit after this many seconds without events"),
    batch_size: int = typer.Option(5000, "--batch-size", min=1, help="most events per micro-batch"),
    max_wait_ms: int = typer.Option(250, "--max-wait-ms", min=0, help="longest wait to fill a micro-batch"),
    map_workers: int | None = typer.Option(
        None,
        "--map-workers",
        min=0,
        help="Beam mapping processes pipelined with the lake commit (default: 1 on 2+ cores, 0 = map in this process)",
    ),
    group: str = typer.Option("careloop-transforms", "--group", help="Kafka consumer group"),
    features: bool = typer.Option(
        True, "--features/--no-features", help="recompute touched persons' features and push them to Feast per batch"
    ),
) -> None:
    """Consume `fhir` and `dicom`, map to OMOP CDM v5.4 and commit each micro-batch to the lake (SIGTERM finishes
    the batch and exits cleanly)."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from careloop.console import err
    from careloop.settings import load_settings
    from transforms import StreamRunner

    logging.basicConfig(level=logging.WARNING)
    settings = load_settings()
    hooks = feature_hooks(settings, features)
    runner = StreamRunner(settings, batch_size=batch_size, max_wait_ms=max_wait_ms, group_id=group,
                          on_batch_committed=hooks, map_workers=map_workers,
                          install_signal_handlers=True)  # fmt: skip
    err.print(
        f"[dim]streaming {settings.topic('fhir')}, {settings.topic('dicom')} -> lake omop.*"
        f"{' -> Feast' if features else ''} "
        f"(batch {batch_size}, wait {max_wait_ms} ms{'' if until_idle is None else f', idle exit {until_idle}s'})"
    )
    try:
        summary = runner.run(until_idle=until_idle)
    finally:
        close_hooks(hooks)
    err.print(
        f"{summary.batches} batches, {summary.events} events, {summary.rows_written} rows written, "
        f"{summary.dead_letters} dead letters, {summary.events_per_s:.0f} events/s; stopped by {summary.stopped_by}"
    )


def feature_hooks(settings, enabled: bool) -> list:
    """The feature store's per-batch push, as a stream hook: a failing push blocks the offset commit, so the batch
    is retried and nothing is lost (issue 6). Applying the Feast repo first is idempotent. The hook runs in its
    own process (`careloop.hook_process`): next to the runner's busy main thread it would wait for the interpreter
    lock after each of its DuckDB statements. Close the hooks with `close_hooks` when the runner is done."""
    if not enabled:
        return []
    from functools import partial

    import feature_store
    from careloop.hook_process import HookProcess

    feature_store.apply(settings)
    return [HookProcess(partial(feature_store.StreamFeatureHook, settings), name="features").start()]


def close_hooks(hooks: list) -> None:
    for hook in hooks:
        close = getattr(hook, "close", None)
        if callable(close):
            close()


@app.command("status")
def status(last: int = typer.Option(10, "--last", min=1, help="how many recent batches to show")) -> None:
    """Recent micro-batches: events, rows, dead letters, latency, events/s and consumer lag."""
    from careloop.commands.sql import Format, render
    from careloop.duck import connect
    from careloop.query import run_sql
    from careloop.settings import load_settings
    from transforms import ensure_omop_schema

    settings = load_settings()
    con = connect(settings)
    ensure_omop_schema(con)  # a fresh lake shows an empty status rather than a catalog error
    con.close()
    cols, rows = run_sql(settings, f"""
        SELECT committed_at, mode, events, rows_written, rows_deleted, dead_letters, skipped, stale,
               round(batch_latency_ms) AS latency_ms, round(events_per_s) AS events_per_s, consumer_lag
        FROM omop.stream_status ORDER BY committed_at DESC LIMIT {int(last)}""")  # fmt: skip
    render(cols, rows, Format.table)
