"""The engineers' page: ``/`` (index.html) and ``/static/*``, served by the API's own app.

One page, no framework, no CDN and no build step (it must work in a control room without the
internet): vanilla JavaScript modules and inline SVG, talking to ``/api/v1`` with the bearer
token pasted at login. Every response carries a strict Content-Security-Policy: only this
origin's scripts, styles, images and fetches, so an injected ``<script>`` or a stray link to a
CDN fails loudly instead of working by accident.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "mount_page"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""index.html, app.js, style.css (package data of ``controller``)."""

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page is small and changes with the controller's version: always revalidate.
    "Cache-Control": "no-cache",
}


class _PageFiles(StaticFiles):
    """StaticFiles with the page's security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response


def mount_page(app: FastAPI) -> None:
    """Serve the page on ``app``: ``/`` is index.html, ``/static/*`` its scripts and styles.

    Call it before the server starts. Neither route is in the OpenAPI schema (the page is not
    part of the API).
    """

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)

    app.mount("/static", _PageFiles(directory=STATIC_DIR), name="static")
