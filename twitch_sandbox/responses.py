"""Response helpers shared by the endpoints."""

from __future__ import annotations

import json
from http import HTTPStatus
from urllib.parse import urlencode

from aiohttp import web


def json_response(
    body: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # Exactly "application/json", without the charset aiohttp would add, as
    # Twitch sends it.
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def helix_error(status: int, message: str) -> web.Response:
    """A Helix error: ``{"error": <reason>, "status": ..., "message": ...}``."""
    body = {"error": HTTPStatus(status).phrase, "status": status, "message": message}
    return json_response(body, status=status)


def redirect(uri: str, params: dict[str, str]) -> web.Response:
    """302 to ``uri`` with ``params`` added to whatever query it already has.

    Returned rather than raised so the recording middleware sees the status.
    """
    separator = "&" if "?" in uri else "?"
    location = f"{uri}{separator}{urlencode(params)}" if params else uri
    return web.Response(status=302, headers={"Location": location})
