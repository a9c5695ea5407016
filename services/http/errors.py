"""Every error answer is JSON ``{"detail": "...", "code": "..."}``: ``detail`` says what was wrong and what to do,
naming no server path (validation errors summarised in one line, without the submitted value); ``code`` is the
machine-readable kind (``ErrorCode``) that the pages word themselves."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from swapstream.services.engine.errors import ErrorCode, SwapInputError, code_for_status
from swapstream.services.jobs.disk import is_disk_full
from swapstream.services.jobs.service import Busy
from swapstream.services.jobs.store import JobStoreError
from swapstream.services.jobs.uploads import UploadRejected
from swapstream.services.triton.client import TritonCallError

log = logging.getLogger("swapstream.api")


class ErrorAnswer(BaseModel):
    detail: str
    code: ErrorCode


# Every route under /v1 may answer these (the OpenAPI document lists them and the codes).
ERROR_RESPONSES = {"4XX": {"model": ErrorAnswer, "description": "refused: `detail` says why, `code` what kind"},
                   "5XX": {"model": ErrorAnswer, "description": "the service failed or is unavailable"}}


def error_answer(status: int, detail: str, code: ErrorCode, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def summarise_validation(error: RequestValidationError) -> str:
    """One line per invalid field (where and why), never echoing the submitted value."""
    parts = []
    for item in error.errors()[:10]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)[:1000]


async def _rejected(request: Request, error: UploadRejected):
    return error_answer(error.status, request.app.state.service.public(error.message), error.code)


async def _bad_input(request: Request, error: SwapInputError):
    """Bad input (a photo, a video, the options): a 422 with the error's own code, wherever a route meets it."""
    return error_answer(422, request.app.state.service.public(str(error)), error.code)


async def _invalid(_request, error: RequestValidationError):
    return error_answer(422, summarise_validation(error), ErrorCode.BAD_OPTION)


async def _busy(_request, error: Busy):
    return error_answer(429, str(error), ErrorCode.TOO_MANY_REQUESTS, {"Retry-After": str(error.retry_after)})


async def _http(_request, error: HTTPException):
    return error_answer(error.status_code, str(error.detail), code_for_status(error.status_code), error.headers)


async def _internal(request: Request, error: Exception):
    log.error("%s %s failed", request.method, request.url.path, exc_info=error)
    if is_disk_full(error):
        return error_answer(507, "the server's disk is full; try again later", ErrorCode.DISK_FULL)
    return error_answer(500, "internal error; the service log has the details", ErrorCode.INTERNAL_ERROR)


async def _triton_down(_request, error: TritonCallError):
    return error_answer(503, f"the inference server failed: {error}; retry shortly", ErrorCode.INFERENCE_UNAVAILABLE)


async def _store_down(_request, error: JobStoreError):
    return error_answer(503, f"the job store is unavailable: {error}", ErrorCode.STORE_UNAVAILABLE)


def add_error_handlers(app: FastAPI) -> None:
    for kind, handler in ((UploadRejected, _rejected), (SwapInputError, _bad_input),
                          (RequestValidationError, _invalid), (Busy, _busy),
                          (Exception, _internal), (TritonCallError, _triton_down), (JobStoreError, _store_down),
                          (HTTPException, _http)):
        app.add_exception_handler(kind, handler)
