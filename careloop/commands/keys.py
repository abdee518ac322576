"""`careloop keys create|list|revoke`: bearer API keys of the gateway (stored hashed under home/keys)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Gateway API keys: one per source system (EHR, PACS, ...).", no_args_is_help=True)


@app.command()
def create(
    source: str = typer.Option(..., "--source", help="name of the source system stamped into its events"),
) -> None:
    """Create a key for SOURCE and print it once (only its hash is stored)."""
    from careloop.console import err, out
    from careloop.settings import load_settings
    from ingestion.apikeys import ApiKeys

    key_id, token = ApiKeys(load_settings()).create(source)
    out.print(token)
    err.print(f"key {key_id} for source {source!r} created; it is shown only this once")


@app.command("list")
def list_keys() -> None:
    """Key ids, sources and creation times (never the keys)."""
    from rich.table import Table

    from careloop.console import out
    from careloop.settings import load_settings
    from ingestion.apikeys import ApiKeys

    table = Table("key id", "source", "created")
    for row in ApiKeys(load_settings()).list():
        table.add_row(row["key_id"], row["source"], row["created"])
    out.print(table)


@app.command()
def revoke(key_id: str = typer.Argument(..., help="the key id shown by `careloop keys list`")) -> None:
    """Revoke a key; the gateway refuses it from its next request on."""
    from careloop.console import out
    from careloop.errors import CareloopError
    from careloop.settings import load_settings
    from ingestion.apikeys import ApiKeys

    if not ApiKeys(load_settings()).revoke(key_id):
        raise CareloopError(f"no key with id {key_id}")
    out.print(f"key {key_id} revoked")
