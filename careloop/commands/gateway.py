"""`careloop gateway`: the EHR-facing HTTP service (FHIR, bulk NDJSON, Subscription notifications, STOW-RS)."""

from __future__ import annotations

import typer


def gateway(
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(None, help="port (default: CARELOOP_GATEWAY_PORT, 8080)"),
) -> None:
    """Serve the ingestion gateway until interrupted."""
    import uvicorn

    from careloop.console import err
    from careloop.settings import load_settings
    from ingestion.gateway import create_app

    settings = load_settings()
    port = settings.gateway_port if port is None else port
    err.print(f"careloop gateway on http://{host}:{port}/fhir (site {settings.site})")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower(),
                access_log=False)  # fmt: skip
