"""The one JSON encoder for everything genre-stream writes (MQTT, JSON lines, history, dashboard, classify).

Two things a year of input brings would otherwise produce output that consumers cannot parse:

* non-finite numbers (a NaN confidence from corrupt audio): Python writes ``NaN``/``Infinity``,
  which is not JSON; they become ``null``;
* file names that are not valid UTF-8 (``b'\\xff.wav'`` becomes a lone surrogate in a Python
  str), which cannot be encoded as UTF-8 at all; undecodable bytes are written as ``\\xff``.

The fast path is a plain ``json.dumps(allow_nan=False)``; only a payload that fails it is cleaned,
and each cleaning is logged with the fields concerned, so a bad value is visible, never silent.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from .ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
# A non-UTF-8 file name is serialised again for every output and every dashboard page: one line, then counts.
_REPLACED = RateLimitedLog(log, "JSON output: replaced values that JSON/UTF-8 cannot carry {count:,} more times in the last {seconds:.0f} s")


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as valid text: bytes that are not UTF-8 shown as ``\\xff`` (the path itself is untouched)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def dumps(data: Any, *, indent: int | None = None, compact: bool = True) -> str:
    """JSON text that is always valid JSON and always encodable as UTF-8."""
    separators = (",", ":") if compact and indent is None else None
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, indent=indent, separators=separators)
        text.encode("utf-8")
        return text
    except (ValueError, UnicodeEncodeError):
        fixed: list[str] = []
        clean = _clean(data, "", fixed)
        _REPLACED.hit("JSON output: replaced values that JSON/UTF-8 cannot carry (%s)", ", ".join(fixed[:10]) or "?")
        return json.dumps(clean, ensure_ascii=False, allow_nan=False, indent=indent, separators=separators)


def _clean(value: Any, where: str, fixed: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        fixed.append(f"{where or 'value'}={value!r} -> null")
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            fixed.append(f"{where or 'value'}: undecodable bytes -> \\x escapes")
            return display_path(value)
        return value
    if isinstance(value, dict):
        return {_clean(k, where, fixed): _clean(v, f"{where}.{k}" if where else str(k), fixed) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{where}[{i}]", fixed) for i, v in enumerate(value)]
    if hasattr(value, "item") and not isinstance(value, (int, bool)):  # numpy scalars
        return _clean(value.item(), where, fixed)
    return value
