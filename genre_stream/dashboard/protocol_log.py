"""What aiohttp's connection handler logs, rate-limited: every malformed request was an ERROR with a traceback.

aiohttp logs each request it cannot parse (a URL over 8190 bytes, a broken header, binary junk after
the first request) with ``logger.exception``, and so does a handler that raises. A script sending
thousands of such requests wrote thousands of tracebacks. ``ProtocolLog`` is handed to aiohttp in
place of its ``aiohttp.server`` logger: a client's bad request becomes one warning line without a
traceback, then a count a minute; a handler's exception (a bug: the client got a 500) keeps its
traceback the first time, then is counted the same way.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from ..common.ratelimit import RateLimitedLog

log = logging.getLogger("genre_stream.dashboard.server")
_aiohttp = logging.getLogger("aiohttp.server")


class ProtocolLog:
    """The logger aiohttp's ``RequestHandler`` calls (``debug`` and ``exception``); see the module docstring."""

    def __init__(self) -> None:
        self.bad_requests = RateLimitedLog(log, "dashboard: refused {count:,} more malformed requests in the last "
                                                "{seconds:.0f} s")
        self.failures = RateLimitedLog(log, "dashboard: {count:,} more requests failed (500) in the last "
                                            "{seconds:.0f} s", level=logging.ERROR)

    @property
    def limiters(self) -> tuple[RateLimitedLog, ...]:
        return self.bad_requests, self.failures

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        _aiohttp.debug(msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):  # the client's request, not our fault: no traceback
            reason = " ".join(str(exc).split())[:200]
            self.bad_requests.hit("dashboard: " + msg + ": %s", *args, reason)
        else:
            self.failures.hit("dashboard: " + msg, *args, exc_info=exc)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:  # aiohttp's own notices (rare): as they were
        _aiohttp.warning(msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        _aiohttp.error(msg, *args, **kwargs)
