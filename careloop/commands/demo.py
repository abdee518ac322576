"""`careloop demo`: the whole loop on the embedded default (the EHR simulator), one command.

simulate -> gateway core (validate, de-identify, vault, dedupe) -> Kafka -> Beam -> OMOP lake -> Feast features,
with lineage for every step; then a summary an analyst could have written in SQL.
"""

from __future__ import annotations

import typer


def demo(
    patients: int = typer.Option(40, min=1, help="synthetic patients to simulate"),
    months: int = typer.Option(12, min=1, help="months of history"),
    sites: int = typer.Option(2, min=1, help="hospital sites"),
    seed: int = typer.Option(7, min=0, help="simulator seed (same seed, same data)"),
    features: bool = typer.Option(True, "--features/--no-features", help="push features to Feast per batch"),
    keep_broker: bool = typer.Option(False, help="leave the local broker running afterwards"),
) -> None:
    """Run the loop end to end on synthetic patients and print what landed where."""
    from careloop.broker import LocalBroker
    from careloop.console import err, out
    from careloop.settings import load_settings
    from careloop.topics import ensure_topics

    settings = load_settings()
    err.print(f"[bold]careloop demo[/] — state in {settings.home_dir}")
    started = None
    if not settings.kafka_bootstrap:
        broker = LocalBroker(settings)
        if broker.state() is None:
            started = broker.start()
            err.print(f"• broker started at {started.bootstrap} (pid {started.pid})")
    ensure_topics(settings)
    try:
        _load_vocabulary_once(settings)
        _publish(settings, patients=patients, months=months, sites=sites, seed=seed)
        _stream(settings, features=features)
        _summarise(settings, out)
    finally:
        if started is not None and not keep_broker:
            LocalBroker(settings).stop()
            err.print(f"• broker stopped (pid {started.pid})")


def _load_vocabulary_once(settings) -> None:
    from careloop.commands.vocab import EUNOMIA
    from careloop.console import err
    from careloop.duck import connect
    from careloop.errors import CareloopError
    from transforms import ensure_omop_schema, load_vocabulary

    con = connect(settings)
    ensure_omop_schema(con)
    if con.execute("SELECT count(*) FROM omop.concept").fetchone()[0]:
        return
    if not EUNOMIA.is_dir():
        raise CareloopError(f"no vocabulary loaded and the default Eunomia subset is missing at {EUNOMIA}; "
                            "run `careloop vocab load DIR` with an OHDSI Athena export first")  # fmt: skip
    counts = load_vocabulary(con, EUNOMIA)
    err.print(f"• vocabulary loaded: {counts.get('concept', 0):,} concepts")


def _publish(settings, *, patients: int, months: int, sites: int, seed: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from careloop.console import err
    from ingestion.simulator import SimulationConfig
    from ingestion.simulator.publish import publish_simulation

    config = SimulationConfig(patients=patients, sites=sites, months=months, seed=seed)
    with Progress(TextColumn("• {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:  # fmt: skip
        task = progress.add_task("simulate + de-identify + publish", total=None)

        def on_progress(done: int, total: int | None, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label or "publish")

        summary = publish_simulation(config, settings=settings, truth_dir=settings.path("demo"),
                                     on_progress=on_progress)  # fmt: skip
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.outcomes.items()))
    err.print(f"• published {summary.submitted:,} deliveries through the gateway core: {counts}")


def _stream(settings, *, features: bool) -> None:
    from careloop.commands.stream import close_hooks, feature_hooks
    from careloop.console import err
    from transforms import StreamRunner

    hooks = feature_hooks(settings, features)
    err.print("• streaming Kafka -> Beam -> OMOP lake" + (" -> Feast" if features else "") + " until idle")
    try:
        summary = StreamRunner(settings, on_batch_committed=hooks).run(until_idle=5)
    finally:
        close_hooks(hooks)
    err.print(f"• {summary.batches} micro-batches, {summary.events:,} events, {summary.rows_written:,} OMOP rows, "
              f"{summary.dead_letters} dead letters")  # fmt: skip


def _summarise(settings, out) -> None:
    from careloop.commands.sql import Format, render
    from careloop.query import run_sql

    out.print('\n[bold]OMOP lake[/] (careloop sql "select … from omop.<table>")')
    tables = ("person", "visit_occurrence", "condition_occurrence", "measurement", "observation", "drug_exposure",
              "procedure_occurrence", "image_occurrence", "death")  # fmt: skip
    query = " UNION ALL ".join(f"SELECT '{t}' AS omop_table, count(*) AS rows FROM omop.{t}" for t in tables)
    render(*run_sql(settings, query), Format.table)
    out.print("\n[bold]Gateway outcomes[/] (lineage.ingest_events)")
    render(*run_sql(settings, "SELECT status, coalesce(reason, '') AS reason, count(*) AS events "
                              "FROM lineage.ingest_events GROUP BY ALL ORDER BY events DESC LIMIT 10"),
           Format.table)  # fmt: skip
    out.print("\n[bold]Where did one measurement come from?[/] (lineage.edges, walked upstream)")
    render(*run_sql(settings, """
        WITH RECURSIVE up(kind, id, depth) AS (
          SELECT 'omop', (SELECT 'measurement/' || min(measurement_id) FROM omop.measurement), 0
          UNION ALL
          SELECT e.src_kind, e.src_id, up.depth + 1 FROM lineage.edges e
          JOIN up ON e.dst_kind = up.kind AND e.dst_id = up.id WHERE up.depth < 6)
        SELECT DISTINCT depth, kind, id FROM up ORDER BY depth"""), Format.table)  # fmt: skip
