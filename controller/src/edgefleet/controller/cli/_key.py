"""``edgefleet key ...``: the signing keys, their rotation, and where each device is in it."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any

import typer

from edgefleet.shared.errors import ConfigError

from .. import keys
from ._app import JsonFlag, key_app, opened_home
from ._render import console, new_table, print_json, when


def _plain(value: Any) -> dict[str, Any]:
    return {
        k: v.isoformat() if isinstance(v, datetime) else v
        for k, v in dataclasses.asdict(value).items()
    }


@key_app.command("list")
def key_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the signing keys: current (signs new manifests), next (being introduced to
    devices) and retired (revoked on devices)."""
    with opened_home(ctx) as home:
        found = keys.list_keys(home)
    if as_json:
        print_json([_plain(k) for k in found])
        return
    table = new_table("key", "state", "created", "retired", "public key")
    for k in found:
        table.add_row(k.key_id, k.state, when(k.created_at), when(k.retired_at), k.public_key)
    console().print(table)


@key_app.command("rotate")
def key_rotate(
    ctx: typer.Context,
    finish: Annotated[
        bool,
        typer.Option(
            "--finish",
            help="Make the next key current once every device confirmed it; the old key is "
            "retired and revoked on every device.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="With --finish: finish even though some devices have not confirmed."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Rotate the signing key: make the next key and have the current key introduce it to
    every device (a signed trust update the daemon sends); with --finish, switch to it."""
    if force and not finish:
        raise ConfigError("--force goes with --finish")
    with opened_home(ctx) as home:
        done = keys.finish_rotation(home, force=force) if finish else keys.rotate_keys(home)
    if as_json:
        print_json(_plain(done))
        return
    out = console()
    count = (
        f"trust updates recorded for {len(done.devices)} device(s); `edgefleet serve` sends them"
    )
    if not finish:
        out.print(f"next key {done.next} introduced by key {done.current}: {count}")
        out.print(
            "devices enrolled from now on trust both keys; once every device confirmed "
            "(`edgefleet key status`), run `edgefleet key rotate --finish`"
        )
        return
    out.print(f"key {done.current} is current; key {done.retired} is retired: {count}")
    if done.unconfirmed:
        out.print(
            f"finished without confirmation from: {', '.join(done.unconfirmed)} "
            "(they receive both updates, in order, when they return)"
        )


@key_app.command("status")
def key_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show each device's newest trust update and whether the device confirmed it."""
    with opened_home(ctx) as home:
        rows = keys.trust_status(home)
    if as_json:
        print_json([_plain(r) for r in rows])
        return
    table = new_table("device", "version", "state", "signed by", "error", "updated")
    for r in rows:
        table.add_row(
            r.device, str(r.version), r.state, r.signer_key_id, r.error_code or "-",
            when(r.updated_at),
        )  # fmt: skip
    console().print(table)
