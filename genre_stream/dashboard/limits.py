"""How many connections the dashboard may hold: derived from the process's file descriptor limit.

Every open page holds a socket, and a socket is a file descriptor. Under systemd the soft limit is
1024 unless the unit says otherwise, and the daemon needs descriptors of its own: the model, the
SQLite files (history, outbox, watch state, library: three each in WAL mode), inotify, ffmpeg's
pipes, the MQTT socket, the decoder's temporary files. When pages took them all, accept() failed
with EMFILE in a loop (thousands of tracebacks a second), the history could not be written and a
watched file could not be decoded. So the dashboard's share is the limit minus a reserve, and
what does not fit is answered 503 and closed (``listener.py``).
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

MIN_RESERVE = 96  # descriptors kept for the rest of the daemon, at least (see the module docstring)
RESERVE_FRACTION = 8  # ... or 1/8 of the limit, when that is more
REQUEST_HEADROOM = 32  # connections beyond max_clients live streams: page loads, API calls, scrapes
HEALTH_ROOM = 8  # connections kept free of live streams, so /healthz and /metrics answer when pages are full
MIN_CONNECTIONS = 4  # even under an absurdly low limit the dashboard answers something
# paho-mqtt's network loop uses select(), which cannot watch a descriptor numbered 1024 or more: the
# dashboard's sockets must not take all of the numbers below it, whatever the limit was raised to.
SELECT_FD_LIMIT = 1024
RAISE_TARGET = 65536  # where the soft limit is raised to when the hard limit is unlimited
RAISE_CEILING = 1 << 20  # Linux's default fs.nr_open: setrlimit refuses more


@dataclass(frozen=True)
class ConnectionLimits:
    """The dashboard's caps, computed once at start from ``http.max_clients`` and RLIMIT_NOFILE.

    ``connections`` caps open TCP connections of every kind (a page load, an API call, a live
    stream, a client that sends half a request and waits); ``live`` caps the live streams among
    them, leaving ``HEALTH_ROOM`` for /healthz. ``fd_limit`` is the soft limit used and ``reserve``
    what is left to the daemon; ``max_clients`` is what the configuration asked for.
    """

    connections: int
    live: int
    fd_limit: int
    reserve: int
    max_clients: int

    @classmethod
    def plan(cls, max_clients: int, soft_limit: int | None = None) -> ConnectionLimits:
        """Caps for ``max_clients`` live streams under ``soft_limit`` (default: this process's)."""
        if soft_limit is None:
            soft_limit = current_soft_limit()
        usable = min(soft_limit, SELECT_FD_LIMIT)
        reserve = max(MIN_RESERVE, usable // RESERVE_FRACTION)
        connections = max(MIN_CONNECTIONS, min(max_clients + REQUEST_HEADROOM, usable - reserve))
        live = max(1, min(max_clients, connections - HEALTH_ROOM))
        return cls(connections, live, soft_limit, reserve, max_clients)

    @property
    def fd_bound(self) -> bool:
        """Whether the descriptor limit (not http.max_clients) set the cap: worth saying at start."""
        return self.connections < self.max_clients + REQUEST_HEADROOM


def current_soft_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return RAISE_CEILING if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard one (an unprivileged process may); (before, after).

    systemd starts services with a soft limit of 1024 and a much higher hard one, leaving it to the
    program to ask for more; the unit file asks too (``LimitNOFILE=``). Failure is not an error:
    the caps are computed from whatever limit is in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = RAISE_TARGET if hard == resource.RLIM_INFINITY else min(hard, RAISE_CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("file descriptor limit stays at %d (raising it to %d failed: %s)", soft, target, exc)
            return soft, soft
        log.debug("file descriptor limit raised from %d to %d", soft, target)
        return soft, target
    return soft, soft
