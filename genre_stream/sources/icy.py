"""HTTP(S) audio as radio stations serve it: Icecast/Shoutcast ICY metadata, and finite files told apart.

ffmpeg reads HTTP itself but keeps the station's in-band metadata to itself, and it cannot tell
a live mount from a plain file on a web server. So for ``http``/``https`` stream sources the
bytes come through here: the request asks for ICY metadata (``Icy-MetaData: 1``); when the
answer carries ``icy-metaint``, every that many audio bytes one metadata block follows (a length
byte times 16, then ``StreamTitle='Artist - Title';...``), which is cut out of the audio and
parsed. The audio bytes go on to ffmpeg's stdin to be decoded as before.

A response with a ``Content-Length`` and no ICY headers is a finite file (``HttpHead.live`` is
False): the stream source paces it to real time and backs off when it ends, instead of reading
three minutes in four seconds and reconnecting in a loop.
"""

from __future__ import annotations

import base64
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPResponse

from .. import __version__
from ..common.redact import redact_url

log = logging.getLogger(__name__)

READ_BYTES = 16384
MAX_METADATA_BYTES = 255 * 16  # the length byte's largest value
_TITLE = re.compile(rb"StreamTitle='(.*?)';", re.S)


class HttpStreamError(Exception):
    """The server refused or could not be reached; the message names the URL (password masked) and why."""


@dataclass(frozen=True)
class HttpHead:
    """What the response headers say about the stream."""

    live: bool  # an ICY mount or an unsized body; False: a file of content_length bytes
    metaint: int | None  # audio bytes between metadata blocks (ICY), None without
    name: str | None  # icy-name: the station's own name
    content_length: int | None


def parse_title(block: bytes) -> str | None:
    """``StreamTitle`` of one metadata block (None when the block carries none); bytes that are not
    UTF-8 are read as Latin-1, which older Shoutcast servers send."""
    m = _TITLE.search(block)
    if m is None:
        return None
    raw = m.group(1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.strip()


def _request(url: str) -> urllib.request.Request:
    """A GET asking for ICY metadata; credentials in the URL become a Basic header (urllib takes none in URLs)."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Icy-MetaData": "1", "User-Agent": f"genre-stream/{__version__}"}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return urllib.request.Request(url, headers=headers)


class IcyStream:
    """One HTTP connection: ``head`` from the headers, then ``chunks`` yields (audio bytes, new title or None)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        try:
            self._response: HTTPResponse = urllib.request.urlopen(_request(url), timeout=timeout)  # noqa: S310 (http/https only)
        except urllib.error.HTTPError as exc:
            raise HttpStreamError(f"{redact_url(url)}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HttpStreamError(f"{redact_url(url)}: {reason}") from None
        headers = self._response.headers
        metaint = headers.get("icy-metaint")
        length = headers.get("Content-Length")
        icy = metaint is not None or any(k.lower().startswith("icy-") for k in headers)
        self.head = HttpHead(
            live=icy or length is None,
            metaint=int(metaint) if metaint and metaint.isdigit() and int(metaint) > 0 else None,
            name=headers.get("icy-name"),
            content_length=int(length) if length and length.isdigit() else None,
        )

    def chunks(self) -> Iterator[tuple[bytes, str | None]]:
        """Audio bytes as they arrive, with a title whenever a metadata block names a new one. Ends at end of
        body; a read that times out raises ``socket.timeout`` (the caller's stall rule decides)."""
        metaint = self.head.metaint
        until_meta = metaint
        title: str | None = None
        while True:
            want = READ_BYTES if until_meta is None else min(READ_BYTES, until_meta)
            data = self._response.read1(want) if want else b""
            if want and not data:
                return
            if until_meta is not None:
                until_meta -= len(data)
            if data:
                yield data, None
            if until_meta == 0:
                new = self._metadata()
                if new is None:
                    return
                if new and new != title:
                    title = new
                    yield b"", title
                until_meta = metaint

    def _metadata(self) -> str | None:
        """Read one metadata block: its title ("" when it names none), None at end of body."""
        size = self._response.read(1)
        if not size:
            return None
        block = self._read_exactly(size[0] * 16)
        if block is None:
            return None
        return parse_title(block) or ""

    def _read_exactly(self, n: int) -> bytes | None:
        out = b""
        while len(out) < n:
            data = self._response.read(n - len(out))
            if not data:
                return None
            out += data
        return out

    def close(self) -> None:
        try:
            self._response.close()
        except OSError:
            pass


def is_http(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme.lower() in ("http", "https")

