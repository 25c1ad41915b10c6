"""``edgefleet serve``: the daemon in the foreground until SIGTERM or Ctrl-C.

What stops it from starting (a taken port, a registry it cannot reach, a bad option) is one
``error:`` line and a non-zero exit; a broker that is down is not: the daemon keeps trying
and ``/healthz`` says why it is unhealthy meanwhile."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from ._app import app, opened_home


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@app.command()
def serve(
    ctx: typer.Context,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="How much to log.")
    ] = LogLevel.INFO,
) -> None:
    """Run the daemon: MQTT ingest, dispatch of pending deployments, artifact server."""
    import logging
    import signal
    import threading

    from ..daemon import Daemon

    logging.basicConfig(
        level=log_level.value.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with opened_home(ctx) as home:
        Daemon(home).run(stop)
