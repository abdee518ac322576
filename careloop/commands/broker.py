"""`careloop broker start|stop|status`: the local Tansu broker, or a note that an external cluster is in use."""

from __future__ import annotations

import typer

app = typer.Typer(help="Local Kafka-protocol broker (Tansu) on 127.0.0.1.", no_args_is_help=True)


@app.command()
def start(
    port: int = typer.Option(None, help="port on 127.0.0.1 (default: CARELOOP_BROKER_PORT or a free one)"),
) -> None:
    """Start the broker (if not running), wait until it accepts connections, create the topics."""
    from careloop.broker import LocalBroker
    from careloop.console import out
    from careloop.settings import load_settings
    from careloop.topics import ensure_topics

    settings = load_settings()
    if settings.kafka_bootstrap:
        out.print(
            f"using the Kafka cluster at {settings.kafka_bootstrap} (CARELOOP_KAFKA_BOOTSTRAP); no local broker started"
        )
        return
    broker = LocalBroker(settings)
    already = broker.state()
    state = broker.start(port)
    created = ensure_topics(settings, state.bootstrap)
    verb = "already running" if already else "started"
    out.print(f"broker {verb} at {state.bootstrap} (pid {state.pid}); topics created: {len(created)}")


@app.command()
def stop() -> None:
    """Stop the local broker by its pid (its in-memory topics are lost)."""
    from careloop.broker import LocalBroker
    from careloop.console import out
    from careloop.settings import load_settings

    settings = load_settings()
    if settings.kafka_bootstrap:
        out.print(f"using the Kafka cluster at {settings.kafka_bootstrap}; no local broker to stop")
        return
    state = LocalBroker(settings).stop()
    out.print("broker not running" if state is None else f"broker stopped (pid {state.pid})")


@app.command()
def status() -> None:
    """Address, pid and topics of the broker in use; exits 1 when none is reachable."""
    from careloop.broker import LocalBroker, list_topics
    from careloop.console import out
    from careloop.errors import BrokerError
    from careloop.settings import load_settings

    settings = load_settings()
    if settings.kafka_bootstrap:
        bootstrap, pid = settings.kafka_bootstrap, "external cluster"
    else:
        state = LocalBroker(settings).state()
        if state is None:
            raise BrokerError("broker not running (start it with `careloop broker start`)")
        bootstrap, pid = state.bootstrap, f"pid {state.pid}"
    topics = list_topics(settings, bootstrap)
    out.print(f"broker at {bootstrap} ({pid})")
    out.print("topics: " + (", ".join(topics) if topics else "(none)"))
