"""Every error answer is JSON ``{"detail": "..."}`` that says what was wrong and what to do, naming no server
path (validation errors summarised in one line, without the submitted value)."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from swapstream.services.jobs.disk import is_disk_full
from swapstream.services.jobs.service import Busy
from swapstream.services.jobs.store import JobStoreError
from swapstream.services.jobs.uploads import UploadRejected
from swapstream.services.triton.client import TritonCallError

log = logging.getLogger("swapstream.api")


def summarise_validation(error: RequestValidationError) -> str:
    """One line per invalid field (where and why), never echoing the submitted value."""
    parts = []
    for item in error.errors()[:10]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)[:1000]


async def _rejected(request: Request, error: UploadRejected):
    return JSONResponse({"detail": request.app.state.service.public(error.message)}, status_code=error.status)


async def _invalid(_request, error: RequestValidationError):
    return JSONResponse({"detail": summarise_validation(error)}, status_code=422)


async def _busy(_request, error: Busy):
    return JSONResponse({"detail": str(error)}, status_code=429, headers={"Retry-After": str(error.retry_after)})


async def _internal(request: Request, error: Exception):
    log.error("%s %s failed", request.method, request.url.path, exc_info=error)
    if is_disk_full(error):
        return JSONResponse({"detail": "the server's disk is full; try again later"}, status_code=507)
    return JSONResponse({"detail": "internal error; the service log has the details"}, status_code=500)


async def _triton_down(_request, error: TritonCallError):
    return JSONResponse({"detail": f"the inference server failed: {error}; retry shortly"}, status_code=503)


async def _store_down(_request, error: JobStoreError):
    return JSONResponse({"detail": f"the job store is unavailable: {error}"}, status_code=503)


def add_error_handlers(app: FastAPI) -> None:
    for kind, handler in ((UploadRejected, _rejected), (RequestValidationError, _invalid), (Busy, _busy),
                          (Exception, _internal), (TritonCallError, _triton_down), (JobStoreError, _store_down)):
        app.add_exception_handler(kind, handler)
