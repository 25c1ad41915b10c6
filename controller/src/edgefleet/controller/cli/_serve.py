"""``edgefleet serve``: the daemon in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import app, opened_home


@app.command()
def serve(
    ctx: typer.Context,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the daemon: MQTT ingest, dispatch of pending deployments, artifact server."""
    import logging
    import signal
    import threading

    from ..daemon import Daemon

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with opened_home(ctx) as home:
        Daemon(home).run(stop)
