"""`careloop` command line: typer + rich, with every heavy import deferred into the command that needs it."""

from __future__ import annotations

import sys

import typer

from careloop.commands import backfill as backfill_cmd
from careloop.commands import broker as broker_cmd
from careloop.commands import demo as demo_cmd
from careloop.commands import features as features_cmd
from careloop.commands import gateway as gateway_cmd
from careloop.commands import keys as keys_cmd
from careloop.commands import publish as publish_cmd
from careloop.commands import simulate as simulate_cmd
from careloop.commands import sql as sql_cmd
from careloop.commands import stream as stream_cmd
from careloop.commands import vocab as vocab_cmd

app = typer.Typer(
    name="careloop",
    help="Event-driven streaming data-and-model platform for clinical machine learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(broker_cmd.app, name="broker")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(publish_cmd.app, name="publish")
app.command("gateway")(gateway_cmd.gateway)
app.command("sql")(sql_cmd.sql)
app.command("simulate")(simulate_cmd.simulate)
app.add_typer(stream_cmd.app, name="stream")
app.command("backfill", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    backfill_cmd.backfill
)
app.add_typer(vocab_cmd.app, name="vocab")
app.add_typer(features_cmd.app, name="features")
app.command("demo")(demo_cmd.demo)

_state = {"verbose": False}


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show full tracebacks on errors"),
) -> None:
    _state["verbose"] = verbose


@app.command()
def version() -> None:
    """Print careloop's version."""
    from careloop import __version__

    typer.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures print one clear line (the trace only with --verbose) and exit 1."""
    from careloop.errors import CareloopError

    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or "-v" in args
    _quiet_third_party_logs(verbose)
    try:
        app(args=args, standalone_mode=True)
    except CareloopError as err:
        _fail(str(err), verbose)
    except KeyboardInterrupt:
        _fail("interrupted", verbose, code=130)


def _quiet_third_party_logs(verbose: bool) -> None:
    """Beam, Feast and Kafka clients log import-time and socket-close chatter at WARNING/ERROR that is not actionable
    for an operator; careloop's own loggers keep the configured level. `--verbose` shows everything."""
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in ("kafka", "apache_beam", "feast", "fsspec", "ray"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        logging.getLogger("careloop").setLevel(logging.WARNING)


def _fail(message: str, verbose: bool, code: int = 1) -> None:
    from careloop.console import err

    if verbose:
        err.print_exception()
    err.print(f"[bold red]error:[/] {message}")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
