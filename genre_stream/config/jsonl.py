"""``[jsonl]``: where JSON lines are written (used by sinks.jsonl)."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import flag, option


@dataclass
class JsonlConfig:
    path: str | None = option(None, cli=flag(
        "--jsonl", help="Also write JSON lines to FILE (- = stdout).", default_text="stdout when there is no --mqtt", metavar="FILE"))
