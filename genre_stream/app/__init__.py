"""The daemon and what it is composed of (``genre-stream run``), and systemd's notify protocol."""
