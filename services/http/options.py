"""``GET /v1/options``: every user-facing option (swap, serve, live) with its type, default, bounds or choices and
help, as the options table defines them; the pages build their controls from it. Open without the token, as
the OpenAPI document is: it holds no secret, and the pages need it before anyone gave a token. The ``swapper``
options show the service's own default (chosen at start) and ``swapper`` says which and why."""
from __future__ import annotations

from fastapi import APIRouter

from swapstream.services import options
from swapstream.services.http.deps import ServiceDep

router = APIRouter()


@router.get("/options", summary="Every option: type, default, bounds or choices, help (the pages read it)")
def list_options(service: ServiceDep) -> dict:
    published = options.published()
    for entries in published.values():
        for entry in entries:
            if entry["name"] == "swapper":
                entry["default"] = service.swapper.name
    return {**published, "swapper": {"name": service.swapper.name, "reason": service.swapper.reason}}
