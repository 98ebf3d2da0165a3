"""``GET /api/history`` and ``/api/history.csv``: the tag history for the page's timeline and export.

Every query parameter is checked before anything is read or formatted, and a bad one is a 400
that names it and its value: ``since=1e308`` and ``since=nan`` used to pass as unix times and
then fail in the date formatting, a 500 with a traceback in the log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..common.ratelimit import RateLimitedLog
from ..common.timespec import parse_time, shown
from ..history.reader import HistoryError, HistoryReader, Segment, segments_csv
from ..sinks.messages import iso_utc
from .responses import error_response, json_response

HISTORY_KINDS = ("segments", "states", "events")
MAX_SOURCE_CHARS = 200  # a source id is a short name; a longer one is a probe, not a query
MAX_LIMIT_DIGITS = 12  # int() of a 5000-digit string is slow (and refused from 4300 digits): check first


@dataclass(frozen=True)
class HistoryQuery:
    """The validated parameters of a history request (JSON or CSV)."""

    reader: HistoryReader
    kind: str
    source: str | None
    since: float
    until: float
    limit: int

    def segments(self) -> list[Segment]:
        """The newest ``limit`` segments: the cap keeps a 7-day page from loading an unbounded list."""
        return self.reader.segments(self.source, self.since, self.until)[-self.limit:]


def parse_query(reader: HistoryReader | None, query: dict[str, str] | Any, max_rows: int) -> HistoryQuery | web.Response:
    """The history parameters of a request (at most ``max_rows`` rows), or the 400 that says which one is
    wrong and why."""
    if reader is None:
        return error_response(404, "tag history is not enabled in this daemon")
    kind = query.get("kind", "segments")
    if kind not in HISTORY_KINDS:
        return error_response(400, f"kind={shown(kind)}: use one of {', '.join(HISTORY_KINDS)}")
    times: dict[str, float] = {}
    for name, default in (("since", "-1h"), ("until", "now")):
        try:  # parse_time refuses nan, inf, 1e308: finite times between 1970 and 9999 only
            times[name] = parse_time(query.get(name, default))
        except ValueError as exc:
            return error_response(400, f"{name}: {exc}")
    text = query.get("limit", str(max_rows)).strip()
    if not (text.isascii() and text.lstrip("-").isdigit() and len(text) <= MAX_LIMIT_DIGITS):
        return error_response(400, f"limit={shown(text)}: not a whole number (at most {max_rows} rows are returned)")
    limit = min(int(text), max_rows)
    if limit < 1:  # SQLite reads LIMIT -1 as "no limit"
        return error_response(400, f"limit={limit}: must be at least 1 (at most {max_rows} rows are returned)")
    source = query.get("source") or None
    if source is not None and (len(source) > MAX_SOURCE_CHARS or not source.isprintable()):
        return error_response(400, f"source={shown(source)}: not a source id (printable, at most "
                                   f"{MAX_SOURCE_CHARS} characters)")
    return HistoryQuery(reader, kind, source, times["since"], times["until"], limit)


class HistoryRoutes:
    """The two history routes over one reader; a database that cannot be read is a 503, logged rate-limited.

    ``max_rows`` gives the row cap, read at each request: the server owns that setting
    (``server.MAX_HISTORY_ROWS``)."""

    def __init__(self, reader: HistoryReader | None, failures: RateLimitedLog, max_rows: Callable[[], int]) -> None:
        self.reader = reader
        self.failures = failures
        self.max_rows = max_rows

    async def history(self, request: web.Request) -> web.Response:
        query = parse_query(self.reader, request.query, self.max_rows())
        if isinstance(query, web.Response):
            return query

        def read() -> list[dict[str, Any]]:
            if query.kind == "segments":
                return [s.to_dict() for s in query.segments()]
            return getattr(query.reader, query.kind)(query.source, query.since, query.until, limit=query.limit)

        try:
            items = await asyncio.get_running_loop().run_in_executor(None, read) if query.reader.exists() else []
        except HistoryError as exc:
            self.failures.hit("dashboard: %s", exc)
            return error_response(503, str(exc))
        return json_response({"kind": query.kind, "source": query.source, "since": iso_utc(query.since),
                              "until": iso_utc(query.until), "items": items})

    async def history_csv(self, request: web.Request) -> web.Response:
        """The segments as a file to save (the page's "CSV" link), same parameters and cap as /api/history."""
        query = parse_query(self.reader, request.query, self.max_rows())
        if isinstance(query, web.Response):
            return query
        if query.kind != "segments":
            return error_response(400, "history.csv exports segments only; use /api/history for states and events")
        try:
            segments = (await asyncio.get_running_loop().run_in_executor(None, query.segments)
                        if query.reader.exists() else [])
        except HistoryError as exc:
            self.failures.hit("dashboard: %s", exc)
            return error_response(503, str(exc))
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(query.until))
        name = f"genre-history-{query.source or 'all'}-{stamp}.csv"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)  # a source id goes into a header
        return web.Response(text=segments_csv(segments), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{safe}"'})
