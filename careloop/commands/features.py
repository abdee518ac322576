"""`careloop features apply|list|describe|backfill|training-set`: the Feast feature store (issue 6)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="OMOP-derived features in Feast: apply, list, describe, backfill, training sets.", no_args_is_help=True
)


@app.command()
def apply() -> None:
    """Write the Feast repo config under CARELOOP_HOME/features/live and register every object (idempotent)."""
    from careloop.console import out
    from careloop.settings import load_settings
    from feature_store import apply as do_apply

    kinds = do_apply(load_settings())
    out.print("applied: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))


@app.command("list")
def list_(
    view: str = typer.Option(None, help="only this feature view"),
    role: str = typer.Option(None, help="only this sensitive-attribute role"),
) -> None:
    """Every feature with its view, type, unit and sensitive-attribute role (no Feast start-up needed)."""
    from rich.table import Table

    from careloop.console import out
    from feature_store.definitions import VIEWS

    table = Table("view", "feature", "type", "unit", "role", "proxy risk", "used by")
    for v in VIEWS:
        if view and v.name != view:
            continue
        for f in v.features:
            if role and f.role != role:
                continue
            table.add_row(v.name, f.name, f.dtype, f.unit, f.role, f.proxy_risk, ",".join(f.used_by))
    out.print(table)


@app.command()
def describe(name: str = typer.Argument(..., help="feature name (or view:feature)")) -> None:
    """All governance metadata of one feature."""
    from careloop.console import out
    from feature_store.governance import describe as do_describe

    spec = do_describe(name)
    out.print(f"[bold]{spec.view}:{spec.name}[/] ({spec.dtype})")
    for k, v in spec.tags().items():
        out.print(f"  {k}: {v}")


@app.command()
def backfill(
    start: str = typer.Option(None, "--start", help="first event time (ISO date/time, UTC)"),
    end: str = typer.Option(None, "--end", help="last event time (ISO date/time, UTC)"),
    snapshot: int = typer.Option(None, "--snapshot", help="lake snapshot id (default: current)"),
    partitions: int = typer.Option(None, help="Dask partitions (default: by person count)"),
) -> None:
    """Compute feature rows over a lake snapshot with Dask into that snapshot's offline store."""
    from careloop.console import out
    from careloop.settings import load_settings
    from feature_store import backfill as do_backfill

    r = do_backfill(load_settings(), start=_when(start), end=_when(end), snapshot_id=snapshot, partitions=partitions)
    out.print(
        f"backfill of lake snapshot {r.snapshot_id}: {r.rows} rows for {r.persons} persons in "
        f"{r.partitions} partitions ({r.scheduler}) -> {r.uri}"
    )


@app.command("training-set")
def training_set(
    entities: str = typer.Option(..., "--entities", help="Parquet with person_id and event_timestamp (index time)"),
    out_path: str = typer.Option(..., "--out", help="Parquet file to write"),
    service: str = typer.Option("t2d-365", "--service", help="feature service (prediction task)"),
    snapshot: int = typer.Option(None, "--snapshot", help="lake snapshot id to reproduce (default: current)"),
) -> None:
    """Point-in-time features for each (person, index time) row; records the training set and its snapshot."""
    from pathlib import Path

    from careloop.console import out
    from careloop.settings import load_settings
    from feature_store import FeatureStoreError
    from feature_store import training_set as do_training_set

    path = Path(entities)
    if not path.is_file():
        raise FeatureStoreError(f"entity file {path} does not exist")
    import pandas as pd

    try:
        entity_df = pd.read_parquet(path)
    except Exception as err:
        raise FeatureStoreError(f"cannot read {path} as Parquet: {err}") from err
    ts = do_training_set(load_settings(), entity_df, service, snapshot_id=snapshot, out=out_path)
    out.print(
        f"training set {ts.training_set_id}: {len(ts.frame)} rows x {ts.frame.shape[1] - 2} features from "
        f"lake snapshot {ts.snapshot_id} -> {ts.uri}"
    )


def _when(value: str | None):
    if value is None:
        return None
    from datetime import UTC, datetime

    from feature_store import FeatureStoreError

    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise FeatureStoreError(f"not an ISO date/time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)
