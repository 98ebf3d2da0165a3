"""Numeric settings with their allowed range declared next to the setting, and the MQTT topic rule.

A range is part of a setting's definition (``hop_seconds: float = setting(5.0, 0, 3600, lo_open=True)``)
so that the one check (``check_ranges`` in the dataclass's ``__post_init__``) covers every way a
value arrives: config file, environment, flag, or code building the dataclass directly. Bounds are
finite on purpose: a value the daemon would die on later (``threads = 100000``, ``hop = 1e308``)
is refused up front, naming the setting.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any


class RangeError(ValueError):
    """A setting outside its range; ``name`` and ``why`` let the config loader add the key and origin."""

    def __init__(self, name: str, value: Any, why: str) -> None:
        super().__init__(f"{name} {why}, got {value!r}")
        self.name = name
        self.value = value
        self.why = why


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""  # appended to the message, e.g. "(0 turns stats off)"

    def problem(self, value: float) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if not math.isfinite(value):
            return f"must be a finite number {self.describe()}"
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return None if above and below else f"must be {self.describe()}"

    def describe(self) -> str:
        text = (f"between {self.lo:g} and {self.hi:g}" if not (self.lo_open or self.hi_open)
                else f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}")
        return f"{text} {self.note}".rstrip()


@dataclass(frozen=True)
class Flag:
    """The command-line flag of a setting, declared with the setting so it is written once.

    ``genre-stream run`` builds its options from these (``cli.run.config_options``): the type
    and choices come from the field's annotation, and the help gets the field's default
    appended unless ``default_text`` says what the default means instead.
    """

    decls: tuple[str, ...]
    help: str = ""
    default_text: str | None = None  # e.g. "the model's"; None: the field's own default
    metavar: str | None = None
    is_flag: bool = False  # an on-switch without a value (``--http-allow-remote``)


def flag(*decls: str, help: str = "", default_text: str | None = None, metavar: str | None = None, is_flag: bool = False) -> Flag:
    return Flag(tuple(decls), help, default_text, metavar, is_flag)


def setting(default: float | None, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, note: str = "",
            cli: Flag | None = None) -> Any:
    """A dataclass field holding a number within [lo, hi] (open ends on request); None is always allowed."""
    return field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open, note), "flag": cli})


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, cli: Flag) -> Any:
    """A dataclass field that has a command-line flag (and no range)."""
    return field(default=default, default_factory=default_factory, metadata={"flag": cli})


def declared(cls: type, name: str) -> tuple[Flag, Range | None]:
    """The flag and range setting ``name`` of ``cls`` declares, for a command that offers it outside `run`."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.metadata["flag"], f.metadata.get("range")


def flagged_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any], Any, Flag]]:
    """(dotted key, field, resolved type, flag) of every setting with a flag, sections included, in order."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get("flag") is not None:
            yield key, f, hints[f.name], f.metadata["flag"]
        elif dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
            yield from flagged_fields(f.default_factory, f"{key}.")  # type: ignore[arg-type]


def check_ranges(obj: Any) -> None:
    """Raise RangeError for the first field of ``obj`` that is outside its declared range."""
    for f in fields(obj):
        bounds: Range | None = f.metadata.get("range")
        value = getattr(obj, f.name)
        if bounds is not None and value is not None:
            why = bounds.problem(value)
            if why is not None:
                raise RangeError(f.name, value, why)


MAX_TOPIC_BYTES = 65535  # MQTT's length prefix


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be used as (the start of) an MQTT publish topic, or None.

    Wildcards are only valid in subscriptions, ``$`` topics belong to the broker ($SYS), NUL is
    forbidden by the MQTT spec, and a trailing ``/`` would produce empty topic levels.
    """
    if not topic:
        return "must not be empty"
    if "#" in topic or "+" in topic:
        return "must not contain the MQTT wildcards # or +"
    if topic.startswith("$"):
        return "must not start with $ (reserved for the broker, e.g. $SYS)"
    if "\0" in topic:
        return "must not contain a NUL character"
    if topic.endswith("/"):
        return "must not end with /"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    if size > MAX_TOPIC_BYTES // 2:  # leave room for the levels appended to it
        return f"is too long ({size} bytes)"
    return None
