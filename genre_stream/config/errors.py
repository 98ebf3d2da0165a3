"""The one error a configuration raises: its message names the key, where the value came from and why."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key, its origin and why."""
