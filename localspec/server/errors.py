"""Every failure as an OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from localspec.errors import (
    ContextOverflowError,
    InvalidSettingsError,
    LocalspecError,
    ModelFileError,
)
from localspec.session import BusyError

log = logging.getLogger("localspec.server")

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or TYPES.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


PARAMS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
          "frequency_penalty", "seed", "max_tokens", "stop", "logit_bias", "max_draft_tokens")


def _param_of(message: str) -> str | None:
    """Settings errors start with the setting's name ("top_p must be in ...")."""
    match = re.match(r"([a-z_]+)\b", message)
    return match.group(1) if match and match.group(1) in PARAMS else None


def from_domain(exc: Exception) -> APIError:
    """A domain or session error as the HTTP error a client should see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BusyError):
        return APIError(503, str(exc), type="server_error", code="unavailable")
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, InvalidSettingsError):
        return APIError(400, str(exc), param=_param_of(str(exc)))
    if isinstance(exc, ModelFileError):
        return APIError(500, str(exc))
    if isinstance(exc, LocalspecError):
        return APIError(400, str(exc))
    return APIError(500, f"internal error: {type(exc).__name__}")


def _location(loc: tuple) -> str | None:
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _location(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif param:
            message = f"{param}: {first.get('msg')}"
        else:
            message = f"the request body is invalid: {first.get('msg')}"
        return APIError(400, message, param=param).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return APIError(exc.status_code, message).response(headers=getattr(exc, "headers", None))

    @app.exception_handler(LocalspecError)
    async def _domain(request: Request, exc: LocalspecError) -> JSONResponse:
        return from_domain(exc).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return from_domain(exc).response()
