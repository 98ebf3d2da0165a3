"""The dashboard's HTTP server: aiohttp on its own thread and event loop inside the daemon.

Routes (all but ``/healthz`` behind the bearer token when one is configured):

* ``GET /`` and ``/static/{app.js,style.css}`` -- the page, served from package data;
* ``GET /api/sources`` -- last state/event payload per source;
* ``GET /api/history?source=&since=&until=&kind=segments|states|events&limit=`` --
  from the tag history; states and events are the MQTT payloads as published;
* ``GET /api/history.csv?source=&since=&until=&limit=`` -- the segments as a CSV download;
* ``GET /api/history/daily?source=&days=7`` -- minutes of music per genre per local day (``summary_api.py``);
* ``GET /api/sources/{source}/recent.wav`` -- the source's last 30 s of audio (``recent_audio.py``);
* ``GET /api/live`` -- server-sent events: ``hello`` (the /api/sources document),
  then ``state``, ``event``, ``source`` (one source's item after an event or an
  availability change), ``level`` and ``mel`` as they happen, and ``health`` (MQTT connection)
  every ``HEALTH_SECONDS``, which doubles as the keep-alive;
* ``POST /api/label`` -- ``{"source", "path", "genre"}``: the user's correction of a file a
  watch source tagged (``corrections.py``); 409 when no library database is configured;
* ``GET /metrics`` -- Prometheus text; ``GET /healthz`` -- liveness.

No route reads a file named by the request: the static files are a fixed set read from
the package at start, history reads only the daemon's own database, and a correction
names a file only to label it, and only one the page lists as tagged by that source.
A correction must be a JSON request, which a cross-site form cannot send.

Every request must name an accepted host (``DashboardConfig.accepts_host``: IP addresses,
localhost, ``allowed_hosts``), which defeats DNS rebinding; every response carries a
strict Content-Security-Policy and no-sniff/no-framing headers.

Pages left open, or a script holding a thousand sockets, must not exhaust the daemon's file
descriptors: connections of every kind are capped from ``max_clients`` and the descriptor limit
(``limits.py``), accepted by ``listener.py`` (503 beyond the cap, no EMFILE loop), and live streams
within them at ``max_clients`` (503 beyond). Repeated refusals are logged once, then counted in one
line a minute (``common.ratelimit``), so a flood of requests is not also a flood of log lines.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..common.jsonsafe import dumps
from ..common.ratelimit import DEFAULT_INTERVAL_SECONDS, RateLimitedLog
from ..common.timespec import shown
from ..config import DashboardConfig
from ..history.reader import HistoryReader
from ..library.db import LibraryError
from .corrections import Corrections
from .history_api import HistoryRoutes
from .limits import ConnectionLimits
from .listener import GuardedListener
from .protocol_log import ProtocolLog
from .recent_audio import RecentAudioRoute
from .responses import error_response as _error
from .responses import json_response as _json
from .state import DashboardState
from .summary_api import DailySummaryRoute

log = logging.getLogger(__name__)


class DashboardError(Exception):
    """The dashboard cannot start (address in use, not permitted...); the message says which address and why."""


STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
MAX_HISTORY_ROWS = 5000  # the newest rows a history request returns (the page's 7-day timeline included)
LIVE_QUEUE = 512  # items a slow page may lag behind before it is disconnected (it reconnects fresh)
HEALTH_SECONDS = 5.0  # how often an open page hears the MQTT connection state (and that the stream is alive)
IDLE_CONNECTION_SECONDS = 15.0  # an idle keep-alive connection is closed after this
TOKEN_COOKIE = "genre_stream_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class DashboardServer:
    """Serves one DashboardState (and the history) over HTTP until ``stop()``."""

    def __init__(self, config: DashboardConfig, state: DashboardState, history: HistoryReader | None = None,
                 corrections: Corrections | None = None) -> None:
        self.config = config
        self.state = state
        self.history = history
        self.corrections = corrections
        state.accepts_corrections = corrections is not None
        self._static = {name: (resources.files(__package__) / "static" / name).read_bytes() for name in STATIC_FILES}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._listener: GuardedListener | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self.limits = ConnectionLimits.plan(config.max_clients)  # planned again at start (the limit may rise)
        self.live_clients = 0  # open /api/live streams (event-loop thread only)
        self.port: int | None = None
        self._bad_host = self._limiter("refused {count:,} more requests with a bad Host header in the last {seconds:.0f} s")
        self._live_full = self._limiter("refused {count:,} more live streams (http.max_clients) in the last {seconds:.0f} s")
        self._unreadable = self._limiter("{count:,} more history requests failed in the last {seconds:.0f} s")
        self._refused_labels = self._limiter("refused {count:,} more corrections in the last {seconds:.0f} s")
        self._protocol_log = ProtocolLog()
        self._loop_errors = self._limiter("{count:,} more event loop errors in the last {seconds:.0f} s", logging.ERROR)

    @staticmethod
    def _limiter(summary: str, level: int = logging.WARNING) -> RateLimitedLog:
        return RateLimitedLog(log, "dashboard: " + summary, level=level)

    def _limiters(self) -> list[RateLimitedLog]:
        own = [self._bad_host, self._live_full, self._unreadable, self._refused_labels, self._loop_errors,
               *self._protocol_log.limiters]
        return own + list(self._listener.limiters if self._listener is not None else ())

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}/"

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Bind and serve on a background thread; raises DashboardError if the address cannot be used."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="dashboard-http", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout)
        except OSError as exc:
            self._stop_loop()
            raise DashboardError(
                f"dashboard: cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
            ) from exc
        log.info("dashboard on %s%s", self.url, " (bearer token required)" if self.config.token else "")
        limits = self.limits
        if limits.fd_bound:
            log.info("dashboard: at most %d connections (%d live pages): the file descriptor limit is %d and %d of "
                     "them are kept for the daemon", limits.connections, limits.live, limits.fd_limit, limits.reserve)
        if not self.config.is_loopback and not self.config.token:
            log.warning("dashboard on %s is reachable from the network WITHOUT a token: anyone who can reach it "
                        "sees what every source hears; set http.token (GENRE_STREAM_HTTP_TOKEN)", self.url)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        self._closing = asyncio.Event()
        self.limits = ConnectionLimits.plan(self.config.max_clients)
        app = web.Application(middlewares=[self._check_host, self._auth])
        app.on_response_prepare.append(self._security_headers)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_get("/api/sources", self._sources)
        history = HistoryRoutes(self.history, self._unreadable, lambda: MAX_HISTORY_ROWS)
        app.router.add_get("/api/history", history.history)
        app.router.add_get("/api/history.csv", history.history_csv)
        app.router.add_get("/api/history/daily", DailySummaryRoute(self.history, self._unreadable).daily)
        app.router.add_get("/api/sources/{source}/recent.wav", RecentAudioRoute(self.state.recent_audio).recent_wav)
        app.router.add_get("/api/live", self._live)
        app.router.add_post("/api/label", self._label)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        # handler_cancellation: a closed page ends its live stream at once (unsubscribes), not at the next write.
        # logger: aiohttp's reports of malformed requests (and handler errors), rate-limited (protocol_log.py).
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True,
                               keepalive_timeout=IDLE_CONNECTION_SECONDS, logger=self._protocol_log)
        await runner.setup()
        server = runner.server
        assert server is not None
        listener = GuardedListener(self.config.host, self.config.port, server, lambda: len(server.connections),
                                   self.limits.connections, on_refused=lambda: self._count_refusal("connections"))
        try:
            await listener.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner, self._listener = runner, listener
        self.port = listener.bound_port  # the real port when port 0 was asked
        self._flush_timer = loop.call_later(DEFAULT_INTERVAL_SECONDS, self._flush_logs)

    def _flush_logs(self, force: bool = False) -> None:
        """Write the summaries of floods that ended (each limiter writes at most one line a minute)."""
        for limiter in self._limiters():
            limiter.flush(force)
        if not force:
            self._flush_timer = asyncio.get_running_loop().call_later(DEFAULT_INTERVAL_SECONDS, self._flush_logs)

    def _count_refusal(self, reason: str) -> None:
        self.state.metrics.refused.labels(reason).inc()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's unhandled errors, logged like the rest: the first with its traceback, then a count a minute."""
        exc = context.get("exception")
        self._loop_errors.hit("dashboard: %s", context.get("message", "event loop error"),
                              exc_info=exc if isinstance(exc, BaseException) else None)

    def stop(self, timeout: float = 5.0) -> None:
        """Close live streams and the listening socket."""
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout)
        except Exception as exc:  # shutting down anyway; say what did not close cleanly
            log.warning("dashboard: unclean shutdown (%s)", exc)
        self._stop_loop()

    async def _shutdown(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._listener is not None:
            self._listener.close()
        self._flush_logs(force=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5.0)
        loop.close()

    # -- middleware --------------------------------------------------------------------
    @web.middleware
    async def _check_host(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Answer only requests addressed to an accepted host name (see the module docstring)."""
        host = request.headers.get("Host", "").strip().lower()
        if host.startswith("["):  # [IPv6] or [IPv6]:port
            name = host[: host.index("]") + 1] if "]" in host else host
        else:
            name = host.rpartition(":")[0] if ":" in host else host
        if not self.config.accepts_host(name):
            self._count_refusal("host")
            self._bad_host.hit("dashboard: refused a request for host %s (accepted: IP addresses, localhost and "
                               "http.allowed_hosts %s)", shown(host), list(self.config.allowed_hosts))
            return web.Response(status=403, text=f"host {host!r} not accepted by this dashboard\n")
        return await handler(request)

    @staticmethod
    async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Bearer token in the Authorization header, or ``?token=`` once, which a browser then keeps as a cookie.

        A page opened as ``/?token=...`` gets an HttpOnly same-site cookie, so its
        stylesheet, script, API calls and event stream (which cannot send headers)
        are authorised without the token being written into every URL.
        """
        token = self.config.token
        if not token or request.path == "/healthz":
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        candidates = [credentials.strip() if scheme.lower() == "bearer" else "",
                      request.query.get("token", ""), request.cookies.get(TOKEN_COOKIE, "")]
        if not any(hmac.compare_digest(c.encode(), token.encode()) for c in candidates):
            return web.Response(status=401, text="bearer token required\n",
                                headers={"WWW-Authenticate": 'Bearer realm="genre-stream"'})
        response = await handler(request)
        if request.query.get("token") and not response.prepared:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    # -- routes ------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._static["index.html"], content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES or name == "index.html":
            return _error(404, f"no static file {name!r}")
        return web.Response(body=self._static[name], content_type=STATIC_FILES[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def _sources(self, request: web.Request) -> web.Response:
        return _json(self.state.sources())

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "uptime_s": round(time.time() - self.state.started, 1),
                      "sources": len(self.state.sources()["sources"])})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, self.state.metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _label(self, request: web.Request) -> web.Response:
        """Record the user's genre for a file a watch source tagged (see ``corrections.py``)."""
        if self.corrections is None:
            return _error(409, "corrections are off: set watch.library_db so labels have a library to go to")
        if request.content_type != "application/json":
            return _error(415, "send the correction as application/json")
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: arrays nested 100,000 deep (was a 500)
            return _error(400, "the request body is not JSON (or nested too deeply)")
        if not isinstance(body, dict):
            return _error(400, 'expected an object {"source", "path", "genre"}')
        fields = {key: body.get(key) for key in ("source", "path", "genre")}
        missing = [key for key, value in fields.items() if not isinstance(value, str) or not value]
        if missing:
            return _error(400, f"missing or not a string: {', '.join(missing)}")
        source, path, genre = fields["source"], fields["path"], fields["genre"]
        if genre not in self.state.labels:
            return _error(400, f"unknown genre {shown(genre)}; the model's genres are: {', '.join(self.state.labels)}")
        if not self.state.lists_tagged_file(source, path):
            return _error(404, f"{shown(path, 300)} is not a file that source {shown(source)} tagged and this page lists")
        corrections = self.corrections
        try:
            label = await asyncio.get_running_loop().run_in_executor(None, corrections.label, path, genre)
        except (LibraryError, OSError) as exc:
            self._refused_labels.hit("dashboard: correction of %s refused: %s", path, exc)
            return _error(422, str(exc))
        self.state.corrected(source, path, genre)
        return _json(label.to_dict())

    async def _live(self, request: web.Request) -> web.StreamResponse:
        if self.live_clients >= self.limits.live:
            self._count_refusal("live")
            self._live_full.hit("dashboard: %d live streams open (http.max_clients, or the file descriptor limit); "
                                "answering 503 to more", self.live_clients)
            return web.Response(status=503, text="too many open dashboard pages; close one or raise http.max_clients\n",
                                headers={"Retry-After": "10"})
        self.live_clients += 1
        try:
            return await self._stream(request)
        finally:
            self.live_clients -= 1

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(maxsize=LIVE_QUEUE)

        def put(item: tuple[str, dict[str, Any]]) -> None:
            try:
                items.put_nowait(item)
            except asyncio.QueueFull:
                # The page fell behind: end its stream; EventSource reconnects and starts from a snapshot.
                while not items.empty():
                    items.get_nowait()
                items.put_nowait(None)

        def listener(kind: str, payload: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(put, (kind, payload))

        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        unsubscribe = self.state.subscribe(listener)
        assert self._closing is not None
        closing = asyncio.ensure_future(self._closing.wait())
        getter: asyncio.Future[tuple[str, dict[str, Any]] | None] | None = None
        try:
            await self._send(response, "hello", self.state.sources())
            for snapshot in self.state.mel_snapshots():
                await self._send(response, "mel", snapshot)
            health_due = loop.time() + HEALTH_SECONDS
            while True:
                getter = asyncio.ensure_future(items.get())
                done, _ = await asyncio.wait({getter, closing}, timeout=max(0.0, health_due - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if closing in done:
                    # the daemon is stopping: what it published last (a source going offline) still goes out
                    pending = [getter.result()] if getter in done else []
                    getter.cancel()
                    while not items.empty():
                        pending.append(items.get_nowait())
                    for item in pending:
                        if item is None:
                            break
                        await self._send(response, *item)
                    break
                if loop.time() >= health_due:  # also while items keep coming (mel every second)
                    health_due = loop.time() + HEALTH_SECONDS
                    await self._send(response, "health", {"mqtt_connected": self.state.mqtt_connected()})
                if getter not in done:
                    getter.cancel()
                    continue
                item = getter.result()
                if item is None:
                    break
                await self._send(response, *item)
        except ConnectionResetError:
            pass  # the page was closed
        finally:
            closing.cancel()
            if getter is not None:
                getter.cancel()
            unsubscribe()
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, kind: str, payload: dict[str, Any]) -> None:
        await response.write(f"event: {kind}\ndata: {dumps(payload)}\n\n".encode())
