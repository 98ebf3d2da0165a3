"""``GET /api/history/daily?source=&days=7``: minutes of music per genre per local day, from the tag history.

The page's "music per day" table. The days are the daemon's local days (its time zone, named in the
answer), today included; each music segment's duration counts, split at midnight
(``history.reader.daily_minutes``); uncertain, not-music and silent stretches do not. Parameters are
checked like the other history routes: a bad one is a 400 naming it and its value.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from ..common.ratelimit import RateLimitedLog
from ..common.timespec import shown
from ..history.reader import HistoryError, HistoryReader, daily_minutes, local_midnight
from .history_api import MAX_SOURCE_CHARS
from .responses import error_response, json_response

DEFAULT_DAYS = 7
MAX_DAYS = 31  # a month of segments is read per request at most


class DailySummaryRoute:
    """The per-day summary over one reader; a database that cannot be read is a 503, logged rate-limited."""

    def __init__(self, reader: HistoryReader | None, failures: RateLimitedLog) -> None:
        self.reader = reader
        self.failures = failures

    async def daily(self, request: web.Request) -> web.Response:
        reader = self.reader
        if reader is None:
            return error_response(404, "tag history is not enabled in this daemon")
        text = request.query.get("days", str(DEFAULT_DAYS)).strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= MAX_DAYS):
            return error_response(400, f"days={shown(text)}: a whole number of days from 1 to {MAX_DAYS}")
        days = int(text)
        source = request.query.get("source") or None
        if source is not None and (len(source) > MAX_SOURCE_CHARS or not source.isprintable()):
            return error_response(400, f"source={shown(source)}: not a source id (printable, at most "
                                       f"{MAX_SOURCE_CHARS} characters)")
        now = time.time()
        first = date.fromtimestamp(now) - timedelta(days=days - 1)

        def read() -> list[dict[str, Any]]:
            segments = reader.segments(source, local_midnight(first), now) if reader.exists() else []
            return daily_minutes(segments, first, days)

        try:
            rows = await asyncio.get_running_loop().run_in_executor(None, read)
        except HistoryError as exc:
            self.failures.hit("dashboard: %s", exc)
            return error_response(503, str(exc))
        return json_response({"source": source, "timezone": time.strftime("%Z", time.localtime(now)),
                              "days": rows})
