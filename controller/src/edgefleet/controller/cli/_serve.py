"""``edgefleet serve``: the daemon in the foreground until SIGTERM or Ctrl-C.

What stops it from starting (a taken port, a registry it cannot reach, a bad option) is one
``error:`` line and a non-zero exit; a broker that is down is not: the daemon keeps trying
and ``/healthz`` says why it is unhealthy meanwhile."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from ._app import app, opened_home

SWITCH_INTERVAL_S = 0.0005


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
    import sys
    import threading

    from ..daemon import Daemon

    logging.basicConfig(
        level=log_level.value.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The MQTT thread reads each packet with a few recv() calls, and after each one waits
    # for the interpreter lock; with ingest busy it waited a switch interval (5 ms) every
    # time, and a batch of orders' acknowledgements crawled in at ~65 a second
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with opened_home(ctx) as home:
        Daemon(home).run(stop)
