"""The pages and their assets on the service's FastAPI app: no token (every ``/v1`` call they make needs it)."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "jobs.html", "/analyze": "analyze.html", "/swap-photo": "swap-photo.html", "/live": "live.html"}
# Pages and scripts change with the service: the browser may keep them but asks whether they changed.
_REVALIDATE = {"Cache-Control": "no-cache"}


class _Static(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(_REVALIDATE)
        return response


def mount_pages(app: FastAPI) -> None:
    app.mount("/static", _Static(directory=STATIC), name="static")
    for route, name in PAGES.items():
        app.add_api_route(route, _page(name), methods=["GET"], include_in_schema=False)


def _page(name: str):
    path = STATIC / name

    def page() -> FileResponse:
        if not path.is_file():  # /live until the live page lands
            raise HTTPException(404, f"this service has no page {name}")
        return FileResponse(path, media_type="text/html", headers=_REVALIDATE)

    return page
