"""The dashboard's HTTP server: aiohttp on its own thread and event loop inside the daemon.

Routes (all but ``/healthz`` behind the bearer token when one is configured):

* ``GET /`` and ``/static/{app.js,style.css}`` -- the page, served from package data;
* ``GET /api/sources`` -- last state/event payload per source;
* ``GET /api/history?source=&since=&until=&kind=segments|states|events&limit=`` --
  from the tag history; states and events are the MQTT payloads as published;
* ``GET /api/history.csv?source=&since=&until=&limit=`` -- the segments as a CSV download;
* ``GET /api/live`` -- server-sent events: ``hello`` (the /api/sources document),
  then ``state``, ``event``, ``source`` (one source's item after an event or an
  availability change) and ``mel`` as they happen, and ``health`` (MQTT connection)
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
strict Content-Security-Policy and no-sniff/no-framing headers. Live streams are capped at
``max_clients`` (503 beyond), so pages left open cannot exhaust the daemon's file descriptors.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..common.jsonsafe import dumps
from ..common.timespec import parse_time
from ..config import DashboardConfig
from ..history.reader import HistoryError, HistoryReader, Segment, segments_csv
from ..library.db import LibraryError
from ..sinks.messages import iso_utc
from .corrections import Corrections
from .state import DashboardState

log = logging.getLogger(__name__)


class DashboardError(Exception):
    """The dashboard cannot start (address in use, not permitted...); the message says which address and why."""


STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
HISTORY_KINDS = ("segments", "states", "events")
MAX_HISTORY_ROWS = 5000
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


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


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
        self.live_clients = 0  # open /api/live streams (event-loop thread only)
        self.port: int | None = None

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
        if not self.config.is_loopback and not self.config.token:
            log.warning("dashboard on %s is reachable from the network WITHOUT a token: anyone who can reach it "
                        "sees what every source hears; set http.token (GENRE_STREAM_HTTP_TOKEN)", self.url)

    async def _start(self) -> None:
        self._closing = asyncio.Event()
        app = web.Application(middlewares=[self._check_host, self._auth])
        app.on_response_prepare.append(self._security_headers)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_get("/api/sources", self._sources)
        app.router.add_get("/api/history", self._history)
        app.router.add_get("/api/history.csv", self._history_csv)
        app.router.add_get("/api/live", self._live)
        app.router.add_post("/api/label", self._label)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        # handler_cancellation: a closed page ends its live stream at once (unsubscribes), not at the next write.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True,
                               keepalive_timeout=IDLE_CONNECTION_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []  # the real port when port 0 was asked
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port

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
            log.warning("dashboard: refused a request for host %r (accepted: IP addresses, localhost and "
                        "http.allowed_hosts %s)", host, list(self.config.allowed_hosts))
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

    def _history_query(self, request: web.Request) -> HistoryQuery | web.Response:
        """The history parameters of a request, or the error response that says which one is wrong."""
        if self.history is None:
            return _error(404, "tag history is not enabled in this daemon")
        q = request.query
        kind = q.get("kind", "segments")
        if kind not in HISTORY_KINDS:
            return _error(400, f"kind={kind!r}: use one of {', '.join(HISTORY_KINDS)}")
        try:
            since = parse_time(q.get("since", "-1h"))
            until = parse_time(q.get("until", "now"))
        except ValueError as exc:
            return _error(400, f"since/until: {exc}")
        try:
            limit = min(int(q.get("limit", MAX_HISTORY_ROWS)), MAX_HISTORY_ROWS)
        except ValueError:
            return _error(400, f"limit={q.get('limit')!r}: not a whole number")
        if limit < 1:  # SQLite reads LIMIT -1 as "no limit"
            return _error(400, f"limit={limit}: must be at least 1 (at most {MAX_HISTORY_ROWS} rows are returned)")
        return HistoryQuery(self.history, kind, q.get("source") or None, since, until, limit)

    async def _history(self, request: web.Request) -> web.Response:
        query = self._history_query(request)
        if isinstance(query, web.Response):
            return query

        def read() -> list[dict[str, Any]]:
            if query.kind == "segments":
                return [s.to_dict() for s in query.segments()]
            return getattr(query.reader, query.kind)(query.source, query.since, query.until, limit=query.limit)

        try:
            items = await asyncio.get_running_loop().run_in_executor(None, read) if query.reader.exists() else []
        except HistoryError as exc:
            log.warning("dashboard: %s", exc)
            return _error(503, str(exc))
        return _json({"kind": query.kind, "source": query.source, "since": iso_utc(query.since),
                      "until": iso_utc(query.until), "items": items})

    async def _history_csv(self, request: web.Request) -> web.Response:
        """The segments as a file to save (the page's "CSV" link), same parameters and cap as /api/history."""
        query = self._history_query(request)
        if isinstance(query, web.Response):
            return query
        if query.kind != "segments":
            return _error(400, "history.csv exports segments only; use /api/history for states and events")
        try:
            segments = (await asyncio.get_running_loop().run_in_executor(None, query.segments)
                        if query.reader.exists() else [])
        except HistoryError as exc:
            log.warning("dashboard: %s", exc)
            return _error(503, str(exc))
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(query.until))
        name = f"genre-history-{query.source or 'all'}-{stamp}.csv"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)  # a source id goes into a header
        return web.Response(text=segments_csv(segments), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{safe}"'})

    async def _label(self, request: web.Request) -> web.Response:
        """Record the user's genre for a file a watch source tagged (see ``corrections.py``)."""
        if self.corrections is None:
            return _error(409, "corrections are off: set watch.library_db so labels have a library to go to")
        if request.content_type != "application/json":
            return _error(415, "send the correction as application/json")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, 'expected an object {"source", "path", "genre"}')
        fields = {key: body.get(key) for key in ("source", "path", "genre")}
        missing = [key for key, value in fields.items() if not isinstance(value, str) or not value]
        if missing:
            return _error(400, f"missing or not a string: {', '.join(missing)}")
        source, path, genre = fields["source"], fields["path"], fields["genre"]
        if genre not in self.state.labels:
            return _error(400, f"unknown genre {genre!r}; the model's genres are: {', '.join(self.state.labels)}")
        if not self.state.lists_tagged_file(source, path):
            return _error(404, f"{path!r} is not a file that source {source!r} tagged and this page lists")
        corrections = self.corrections
        try:
            label = await asyncio.get_running_loop().run_in_executor(None, corrections.label, path, genre)
        except (LibraryError, OSError) as exc:
            log.warning("dashboard: correction of %s refused: %s", path, exc)
            return _error(422, str(exc))
        self.state.corrected(source, path, genre)
        return _json(label.to_dict())

    async def _live(self, request: web.Request) -> web.StreamResponse:
        if self.live_clients >= self.config.max_clients:
            log.warning("dashboard: %d live streams open (http.max_clients); refusing another", self.live_clients)
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
