"""`genre-stream devices`: the input devices a `mic:DEVICE` source can use."""

from __future__ import annotations

import json

import click

from ..sources.devices import AudioDeviceError, list_input_devices


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device instead of a table.")
def devices(as_json: bool) -> None:
    """List audio input devices (index, name, channels, default sample rate).

    Use the index or (part of) the name as `--source mic:DEVICE`; `*` marks the
    system default that a plain `mic` source uses.
    """
    try:
        found = list_input_devices()
    except AudioDeviceError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        for d in found:
            click.echo(json.dumps(d.to_dict()))
        return
    if not found:
        click.echo("no input devices found", err=True)
        return
    click.echo(f"{'':1} {'index':>5}  {'channels':>8}  {'rate':>7}  name")
    for d in found:
        click.echo(f"{'*' if d.is_default else ' ':1} {d.index:>5}  {d.channels:>8}  {d.default_samplerate:>7.0f}  {d.name} ({d.hostapi})")
