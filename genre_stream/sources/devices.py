"""Audio input devices through sounddevice/PortAudio, imported only when a device is needed.

sounddevice loads the PortAudio shared library at import time and fails with an
opaque OSError where it is missing; ``import_sounddevice`` turns that into a
message that names the package to install. Nothing else in genre-stream needs
PortAudio, so classify, watch and stream work on machines without it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


class AudioDeviceError(RuntimeError):
    """No PortAudio, or no input device matching what the user asked for."""


def import_sounddevice() -> ModuleType:
    """The sounddevice module, or ``AudioDeviceError`` telling the user to install libportaudio2."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError('PortAudio library not found')
        raise AudioDeviceError(
            f"live capture needs the PortAudio library, which was not found ({exc}); "
            "install it with `apt install libportaudio2` (Debian/Ubuntu) or your system's portaudio package"
        ) from exc
    except ImportError as exc:
        raise AudioDeviceError(f"live capture needs the Python package sounddevice ({exc}); pip install sounddevice") from exc
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_samplerate: float
    hostapi: str
    is_default: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_input_devices() -> list[InputDevice]:
    """Every PortAudio device with at least one input channel."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise AudioDeviceError(f"PortAudio could not list devices ({exc})") from exc
    result = []
    for dev in devices:
        if dev["max_input_channels"] <= 0:
            continue
        result.append(
            InputDevice(
                index=int(dev["index"]),
                name=str(dev["name"]),
                channels=int(dev["max_input_channels"]),
                default_samplerate=float(dev["default_samplerate"]),
                hostapi=str(hostapis[dev["hostapi"]]["name"]),
                is_default=int(dev["index"]) == default_in,
            )
        )
    return result


def resolve_input_device(spec: str | None) -> InputDevice:
    """The input device for ``mic`` (system default), ``mic:3`` (index) or ``mic:NAME``.

    A name matches exactly first, then as a case-insensitive substring, so
    ``mic:USB`` finds "USB Audio CODEC: - (hw:1,0)"; an ambiguous or unknown name
    is an error listing what exists. Resolved on every (re)open because indices
    change when devices come and go.
    """
    devices = list_input_devices()
    if not devices:
        raise AudioDeviceError("no audio input devices found (PortAudio lists none)")
    if spec is None or spec == "":
        chosen = [d for d in devices if d.is_default] or devices[:1]
        return chosen[0]
    if spec.isdigit():
        for d in devices:
            if d.index == int(spec):
                return d
        raise AudioDeviceError(f"no input device with index {spec}; inputs are: {_describe(devices)}")
    exact = [d for d in devices if d.name == spec]
    if exact:
        return exact[0]
    partial = [d for d in devices if spec.lower() in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if len(partial) > 1:
        raise AudioDeviceError(f"input device name {spec!r} is ambiguous: {_describe(partial)}")
    raise AudioDeviceError(f"no input device named {spec!r}; inputs are: {_describe(devices)}")


def _describe(devices: list[InputDevice]) -> str:
    return ", ".join(f"{d.index}={d.name!r}" for d in devices)
