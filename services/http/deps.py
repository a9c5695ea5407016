"""What the routes depend on, injected the FastAPI way (async: resolved on the event loop, never queued in the
threadpool behind request work): the job queue's ``Service`` (``app.state.service``), its
store and upload limits, the live server (``app.state.live``), and the bearer token check."""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from swapstream.services.jobs.service import Service
from swapstream.services.jobs.store import JobStore
from swapstream.services.jobs.uploads import UploadLimits

bearer = HTTPBearer(auto_error=False)


async def get_service(request: Request) -> Service:
    return request.app.state.service


async def get_store(service: Annotated[Service, Depends(get_service)]) -> JobStore:
    return service.store


async def get_limits(service: Annotated[Service, Depends(get_service)]) -> UploadLimits:
    return service.config.limits


async def require_token(service: Annotated[Service, Depends(get_service)],
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """On every ``/v1`` route (the gate in ``guard.py`` checks it first; here it also shows in the OpenAPI docs)."""
    token = service.config.token
    if token is None:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials, token):
        raise HTTPException(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})


ServiceDep = Annotated[Service, Depends(get_service)]
StoreDep = Annotated[JobStore, Depends(get_store)]
LimitsDep = Annotated[UploadLimits, Depends(get_limits)]
