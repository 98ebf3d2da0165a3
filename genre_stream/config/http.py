"""``[http]``: where the dashboard HTTP server listens, and the safety rule on where it may (used by dashboard/)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .fields import check_ranges, flag, option, setting

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_CLIENTS = 32
LOOPBACK_NAMES = ("localhost",)  # IP literals are always accepted (see accepts_host)


@dataclass(frozen=True)
class DashboardConfig:
    """Where the dashboard listens and who may see it; validated once, when made (and frozen after).

    The dashboard shows what a microphone hears, so it binds to loopback unless
    ``allow_remote`` is set on purpose; ``token`` (a bearer token) then protects
    everything except ``/healthz``.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    allow_remote: bool = False
    mel_interval_seconds: float = 1.0  # how often the live spectrogram is pushed to open pages
    max_clients: int = DEFAULT_MAX_CLIENTS  # open live streams (each holds a socket); more get 503
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted besides loopback and the bound host

    def __post_init__(self) -> None:
        self.validate()

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)

    def accepts_host(self, name: str) -> bool:
        """Whether a request whose Host header names ``name`` (lower case, port removed) is answered.

        A page tricked by DNS rebinding sends the attacker's host *name* in ``Host``; answering only
        IP addresses (the bound one included), localhost and the names in ``allowed_hosts`` keeps
        such pages from reading the dashboard of a daemon on loopback or the LAN.
        """
        if name in LOOPBACK_NAMES or name in {h.lower() for h in self.allowed_hosts}:
            return True
        try:
            ipaddress.ip_address(name[1:-1] if name.startswith("[") and name.endswith("]") else name)
        except ValueError:
            return False
        return True

    def validate(self) -> None:
        """Raise ValueError naming the offending setting and why."""
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"http port {self.port}: must be between 0 and 65535")
        try:
            loopback = is_loopback(self.host)
        except ValueError as exc:
            raise ValueError(f"http host {self.host!r}: {exc}") from None
        if not loopback and not self.allow_remote:
            raise ValueError(
                f"http address {self.host}:{self.port} is not a loopback address, so the dashboard would be reachable "
                "from the network; to do this on purpose set allow_remote = true in [http] (--http-allow-remote, "
                "GENRE_STREAM_HTTP_ALLOW_REMOTE=1), ideally together with a token"
            )
        if self.token is not None and not self.token.strip():
            raise ValueError("http token: empty; leave it unset for no authentication")
        if self.mel_interval_seconds <= 0:
            raise ValueError(f"http mel interval {self.mel_interval_seconds}: must be > 0 seconds")
        if self.max_clients < 1:
            raise ValueError(f"http max_clients {self.max_clients}: must be >= 1")
        for name in self.allowed_hosts:
            if not name or any(c in name for c in " /@\t"):
                raise ValueError(f"http allowed_hosts: {name!r} is not a host name")

    @classmethod
    def from_address(cls, address: str, **kwargs: object) -> DashboardConfig:
        """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` (loopback) -> config."""
        host, port = parse_address(address)
        return cls(host=host, port=port, **kwargs)  # type: ignore[arg-type]


@dataclass
class HttpSettings:
    """The ``[http]`` section of the daemon config (flags ``--http``, ``--http-allow-remote``, ``--http-token``).

    ``listen`` unset means no dashboard at all: nothing listens unless asked.
    Validated when the configuration is loaded, so ``config check`` catches a
    non-loopback address given without ``allow_remote``.
    """

    listen: str | None = option(None, cli=flag(
        "--http", help="Serve the dashboard, JSON API and /metrics here (e.g. 127.0.0.1:8080).", default_text="off", metavar="HOST:PORT"))
    allow_remote: bool = option(False, cli=flag(
        "--http-allow-remote", help="Allow --http on a non-loopback address (the dashboard is then reachable from the network).",
        is_flag=True))
    token: str | None = option(None, cli=flag(
        "--http-token", help="Bearer token required by everything but /healthz; prefer GENRE_STREAM_HTTP_TOKEN (flags show in ps)."))
    max_clients: int = setting(DEFAULT_MAX_CLIENTS, 1, 1000)  # open live streams (dashboard pages)
    allowed_hosts: list[str] = field(default_factory=list)  # e.g. ["genre.example.lan"] behind a proxy

    def __post_init__(self) -> None:
        check_ranges(self)
        self.dashboard()

    def dashboard(self) -> DashboardConfig | None:
        if not self.listen:
            return None
        return DashboardConfig.from_address(self.listen, token=self.token, allow_remote=self.allow_remote,
                                            max_clients=self.max_clients, allowed_hosts=tuple(self.allowed_hosts))


def parse_address(address: str) -> tuple[str, int]:
    text = address.strip()
    if not text:
        raise ValueError("http address: empty; use e.g. 127.0.0.1:8080")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if not sep or (port and not port.startswith(":")):
            raise ValueError(f"http address {address!r}: use [IPv6]:PORT, e.g. [::1]:8080")
        port = port[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.isdigit():
        host, port = "", text
    else:
        raise ValueError(f"http address {address!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    if not port.isdigit():
        raise ValueError(f"http address {address!r}: port {port!r} is not a number")
    number = int(port)
    if number > 65535:
        raise ValueError(f"http address {address!r}: port {number} is above 65535")
    return host or DEFAULT_HOST, number


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; no DNS lookups (a name could resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ValueError("give an IP address (or 'localhost'), not a host name") from None
