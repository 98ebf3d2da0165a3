"""`library ls` queries: ``genre:jazz artist:miles confidence>0.8 live`` (all terms must hold).

A term is ``FIELD:TEXT`` (genre: an exact label; artist:, title:, path: a case-insensitive
substring), ``FIELD>N`` / ``>=`` / ``<`` / ``<=`` on a number (confidence 0-1, duration in
seconds), or a bare word, which is a path substring. The rules live here so the CLI and any
other caller read a query the same way; a term that means nothing is an error naming it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from .db import LibraryError, Track

TEXT_FIELDS = ("genre", "artist", "title", "path")
NUMBER_FIELDS = ("confidence", "duration")
_COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_NUMBER_TERM = re.compile(r"^(\w+)(>=|<=|>|<)(.+)$")
SYNTAX = "genre:LABEL, artist:TEXT, title:TEXT, path:TEXT, confidence>N, duration<N (also >=, <=) or a bare path word"


@dataclass(frozen=True)
class Term:
    field: str
    op: str  # ":" for text, else a comparison
    value: str | float

    def matches(self, track: Track) -> bool:
        if self.op != ":":
            return _COMPARE[self.op](float(getattr(track, self.field)), float(self.value))
        if self.field == "genre":
            return track.genre == self.value
        have = getattr(track, self.field) or ""
        return str(self.value) in have.casefold()


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...]

    def matches(self, track: Track) -> bool:
        return all(t.matches(track) for t in self.terms)


def parse_query(words: list[str] | tuple[str, ...], labels: list[str]) -> Query:
    """Parse the words of a query; ``labels`` are the library's genres (genre: must name one)."""
    return Query(tuple(_term(word, labels) for word in words))


def _term(word: str, labels: list[str]) -> Term:
    number = _NUMBER_TERM.match(word)
    if number:
        field, op, raw = number.groups()
        if field not in NUMBER_FIELDS:
            raise LibraryError(f"{word!r}: {field} is not a number field ({', '.join(NUMBER_FIELDS)}); a query takes {SYNTAX}")
        try:
            value = float(raw)
        except ValueError:
            raise LibraryError(f"{word!r}: {raw!r} is not a number") from None
        return Term(field, op, value)
    field, sep, text = word.partition(":")
    if not sep:
        return Term("path", ":", word.casefold())
    if field not in TEXT_FIELDS:
        raise LibraryError(f"{word!r}: unknown field {field!r}; a query takes {SYNTAX}")
    if field == "genre":
        label = next((lab for lab in labels if lab.casefold() == text.casefold()), None)
        if label is None:
            raise LibraryError(f"{word!r}: {text!r} is not a genre of this library ({', '.join(labels) or 'empty library'})")
        return Term("genre", ":", label)
    return Term(field, ":", text.casefold())
