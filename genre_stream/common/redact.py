"""The one rule for showing secrets: a URL's password (and any echo of it) becomes ``***``.

Used wherever a configured URL reaches output: ``config show``/``check``, exit-78 messages,
MQTT connection logs, stream source logs and events, ffmpeg's command line and error lines.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str) -> str:
    """``mqtt://bob:hunter2@host`` -> ``mqtt://bob:***@host``; URLs without a password are unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:  # unparsable (e.g. a bad IPv6 literal): show nothing that might be a secret
        return MASK if "@" in url else url
    user, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in user:
        return url
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:{MASK}@{host}"))


def redact_text(text: str, url: str) -> str:
    """``text`` (an error line that may quote ``url``) with the URL's password masked."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, MASK) if password else text
