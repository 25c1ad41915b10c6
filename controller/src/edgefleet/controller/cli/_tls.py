"""``edgefleet tls init``: the operator's private CA and the server certificate."""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.shared import broker_endpoint

from ..home import ensure_tls
from ._app import JsonFlag, settings_of, tls_app
from ._render import console, print_json


@tls_app.command("init")
def tls_init(
    ctx: typer.Context,
    san: Annotated[
        list[str] | None,
        typer.Option(
            "--san",
            metavar="NAME",
            help="Another host name or IP address devices use to reach the broker or the "
            "artifact server; repeat for more.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create the private CA (once) and the server certificate for TLS.

    The certificate names the hosts of broker_url and artifact_url and every --san. Then
    use mqtts:// and https:// in config.toml, run `edgefleet broker config` for the TLS
    listener, and enrol devices (or enrol them again): their agent.toml carries the CA.
    """
    from urllib.parse import urlsplit

    settings = settings_of(ctx)
    names = [broker_endpoint(settings.broker_url).host]
    names.append(urlsplit(settings.artifact_url).hostname or "127.0.0.1")
    files = ensure_tls(settings.home, names + list(san or []))
    if as_json:
        print_json(
            {
                "ca": str(files.ca_cert),
                "certificate": str(files.server_cert),
                "key": str(files.server_key),
                "names": list(files.names),
            }
        )
        return
    out = console()
    out.print(f"CA          {files.ca_cert}")
    out.print(f"certificate {files.server_cert} for {', '.join(files.names)}")
    out.print(f"key         {files.server_key} (mode 0600)")
