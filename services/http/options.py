"""``GET /v1/options``: every user-facing option (swap, serve, live) with its type, default, bounds or choices and
help, as the options table defines them; the pages build their controls from it. Open without the token, as
the OpenAPI document is: it holds no secret, and the pages need it before anyone gave a token."""
from __future__ import annotations

from fastapi import APIRouter

from swapstream.services import options

router = APIRouter()


@router.get("/options", summary="Every option: type, default, bounds or choices, help (the pages read it)")
def list_options() -> dict:
    return options.published()
