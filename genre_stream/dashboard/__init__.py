"""Live dashboard, JSON API and Prometheus metrics served from inside the daemon (off by default).

Modules: ``config`` (where it listens; light, imported by the daemon config),
``state`` (what the daemon pushes in), ``metrics`` (Prometheus), ``server`` (aiohttp),
``sink`` (the daemon-facing adapter). Import them directly so that loading the
configuration does not pull in the HTTP stack.
"""
