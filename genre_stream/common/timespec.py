"""Human time specifications for ``--since``/``--until`` and the dashboard's history API.

People ask "what was playing between 14:00 and 15:00" or "in the last hour", so
besides ISO 8601 timestamps a bare clock time means today (local time) and a
signed duration is relative to now.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from datetime import time as dtime

_RELATIVE = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
# The instants a time may name: a day's margin inside 1970-01-01 .. 9999-12-31 UTC, so that every
# time zone can show it. Beyond, ``1e308`` or ``-99999999999d`` would pass as a float and then break
# whatever formats it as a date (the dashboard answered 500, the history command a traceback).
EARLIEST = -86400.0
LATEST = 253402214400.0  # 9999-12-31T00:00:00Z


def parse_time(spec: str, now: datetime | None = None) -> float:
    """``spec`` -> unix time, finite and between 1970 and 9999 (``EARLIEST``, ``LATEST``).

    Accepted: ``now``; ``-90s``, ``-15m``, ``-1h``, ``-2d``, ``-1w`` (before now);
    ``14:00`` or ``14:00:30`` (today, local time); ISO 8601 dates and timestamps
    (``2026-11-26``, ``2026-11-26T14:00``, ``...Z``/``+01:00``; without a zone: local
    time); a plain number is taken as unix time. Raises ValueError naming the value.
    """
    try:
        value = _parse(spec, now or datetime.now().astimezone())
    except (OverflowError, OSError):  # a date that the platform's time functions cannot convert
        value = math.inf
    if not (math.isfinite(value) and EARLIEST <= value <= LATEST):
        raise ValueError(f"{shown(spec)}: not a time between 1970 and 9999; use an ISO timestamp "
                         "(2026-11-26T14:00), a clock time today (14:00), a duration before now (-1h) or 'now'")
    return value


def shown(spec: str, limit: int = 64) -> str:
    """``spec`` quoted for an error message, cut to ``limit`` characters: a query string can be megabytes."""
    text = spec.strip()
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _parse(spec: str, now: datetime) -> float:
    text = spec.strip()
    if not text:
        raise ValueError("empty time; use e.g. 14:00, -1h or 2026-11-26T14:00")
    if text.lower() == "now":
        return now.timestamp()
    m = _RELATIVE.match(text)
    if m:
        return now.timestamp() - float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
    m = _CLOCK.match(text)
    if m:
        hour, minute, second = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError(f"{shown(spec)}: not a clock time (hours 0-23, minutes and seconds 0-59)")
        local = now.astimezone()
        return datetime.combine(local.date(), dtime(hour, minute, second), tzinfo=local.tzinfo).timestamp()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{shown(spec)}: not a time; use an ISO timestamp (2026-11-26T14:00), a clock time today (14:00), "
            "a duration before now (-1h, -30m, -2d) or 'now'"
        ) from None
    try:
        if dt.tzinfo is None:
            dt = dt.astimezone()  # naive -> local time, as a person typing it means
        return dt.timestamp()
    except (ValueError, OverflowError, OSError):  # year 1 in a zone west of UTC...: out of range, said by the caller
        return math.inf
