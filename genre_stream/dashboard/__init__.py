"""Live dashboard, JSON API and Prometheus metrics served from inside the daemon (off by default).

Its settings (``HttpSettings``, ``DashboardConfig``: where it listens) live in ``genre_stream.config.http``.
Modules: ``state`` (what the daemon pushes in), ``metrics`` (Prometheus), ``server`` (aiohttp),
``sink`` (the daemon-facing adapter). Import them directly so that loading the
configuration does not pull in the HTTP stack.
"""
