"""The pages and their assets on the service's FastAPI app: no token (every ``/v1`` call they make needs it).

Every page and asset carries security headers: a Content-Security-Policy that allows only the service's own
scripts, styles, images and connections (the pages load nothing from elsewhere and have no inline script or
style), no framing by other sites, no MIME sniffing, and no referrer sent to other sites."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
HOME = "jobs.html"  # served at /; every other static/<name>.html at /<name> (the nav lists them in common.js)
# blob: holds the results and photos the pages show (object URLs of fetched bodies), data: the empty icon; 'self'
# covers ws(s):// too.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Cache-Control": "no-cache",  # pages and scripts change with the service: the browser asks whether they did
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class _Static(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount_pages(app: FastAPI) -> None:
    app.mount("/static", _Static(directory=STATIC), name="static")
    for path in sorted(STATIC.glob("*.html")):
        route = "/" if path.name == HOME else f"/{path.stem}"
        app.add_api_route(route, _page(path.name), methods=["GET"], include_in_schema=False)


def _page(name: str):
    path = STATIC / name

    def page() -> FileResponse:
        return FileResponse(path, media_type="text/html", headers=HEADERS)

    return page
