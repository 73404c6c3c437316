"""Emulator command: `pipeline emulator`, which serves a GigaChat emulator until Ctrl-C.

Parses options into an EmulatorProfile and prints the SDK's environment variables; serving is server.py's job.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Callable
from typing import Any

import click

from .profile import EmulatorProfile
from .server import start_emulator

_CLICK_TYPES: dict[object, click.ParamType[Any]] = {
    int: click.INT,
    float: click.FLOAT,
    str: click.STRING,
    int | None: click.INT,
}


def _profile_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per EmulatorProfile field (--base-latency-ms for base_latency_ms), help from its metadata."""
    hints = typing.get_type_hints(EmulatorProfile)
    for spec in reversed(dataclasses.fields(EmulatorProfile)):
        name = spec.name.replace("_", "-")
        if hints[spec.name] is bool:
            command = click.option(
                f"--{name}/--no-{name}", spec.name, default=spec.default, show_default=True,
                help=spec.metadata["help"],
            )(command)
            continue
        command = click.option(
            f"--{spec.name.replace('_', '-')}",
            spec.name,
            type=_CLICK_TYPES[hints[spec.name]],
            default=spec.default,
            show_default=True,
            help=spec.metadata["help"],
        )(command)
    return command


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=0, show_default=True, type=int, help="TCP port to listen on; 0 picks a free one."
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM certificate chain: serve HTTPS (needs --tls-key).",
)
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key of --tls-cert."
)
@_profile_options
def emulator_command(host: str, port: int, tls_cert: str | None, tls_key: str | None, **knobs: Any) -> None:
    """Serve a local GigaChat API emulator (OAuth, embeddings, chat, files) until Ctrl-C.

    Prints GIGACHAT_BASE_URL, GIGACHAT_AUTH_URL and GIGACHAT_CREDENTIALS, one per line, once it listens.

    Latencies run from a request's arrival to its answer: an embeddings call's vectors are computed within
    its --per-text-latency-ms, not on top. The OAuth endpoint stands for GigaChat's separate OAuth host: --max-concurrency, --rps and --error-rate do
    not apply to it (it still waits the base latency and is counted in /_stats).

    \b
    Example:
        pipeline emulator --port 8443 --rps 20 --error-rate 0.01
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    try:
        profile = EmulatorProfile(**knobs)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    with start_emulator(profile, host=host, port=port, tls=tls) as emulator:
        click.echo(f"GIGACHAT_BASE_URL={emulator.base_url}")
        click.echo(f"GIGACHAT_AUTH_URL={emulator.auth_url}")
        click.echo(f"GIGACHAT_CREDENTIALS={emulator.credentials}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("GigaChat emulator stopped.", err=True)
