"""The dashboard's JSON answers: one shape for data and one for errors, shared by every route module."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..common.jsonsafe import dumps


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    """``{"error": message}``: the message names the parameter and the value that was wrong, and why."""
    return json_response({"error": message}, status)
