"""Every error leaves the server as JSON {"error": {"code", "message"}} with a fitting status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..errors import (
    BusyError,
    CollectionError,
    FetchError,
    ImageError,
    InvalidQueryError,
    LookalikeError,
    NotFoundError,
)
from .schemas import ErrorResponse

log = logging.getLogger("lookalike.server")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "bad query or body"),
        (401, "missing or wrong API key"),
        (403, "signed image link wrong, altered or expired"),
        (404, "unknown collection or id"),
        (408, "request body arrived too slowly"),
        (413, "body too large"),
        (415, "not an image"),
        (422, "body does not match the schema"),
        (429, "rate limit exceeded"),
    ]
}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The JSON error shape."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def status_of(error: LookalikeError) -> int:
    """HTTP status for a library error."""
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, ImageError):
        return 415
    if isinstance(error, InvalidQueryError):
        return 422
    if isinstance(error, FetchError):
        return 400
    if isinstance(error, (CollectionError, BusyError)):
        return 503
    return 400


def install(app: FastAPI) -> None:
    """Register the handlers that shape every error."""

    @app.exception_handler(LookalikeError)
    async def _library(_: Request, error: LookalikeError) -> JSONResponse:
        response = error_response(status_of(error), error.code, str(error))
        if response.status_code == 503:  # busy (a long write, many URL fetches): come back
            response.headers["retry-after"] = "5"
        return response

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def _invalid(_: Request, error: RequestValidationError | ValidationError) -> JSONResponse:
        problems = []
        for item in error.errors()[:5]:
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            message = str(item.get("msg", "")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        return error_response(422, "invalid_body", "; ".join(problems) or "invalid request")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; the server log has details")
