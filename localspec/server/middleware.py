"""Plain ASGI middleware (streaming-safe): access log + counters, bearer auth, body size limit."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localspec.server.errors import APIError
from localspec.server.metrics import HttpCounters

access_log = logging.getLogger("localspec.server.access")


class AccessLog:
    """One JSON line per request (method, path, status, duration, bytes sent) and the HTTP counters."""

    def __init__(self, app: ASGIApp, counters: HttpCounters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        seen = {"status": 500, "bytes": 0}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.counters.add(scope["path"], seen["status"])
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(json.dumps({
                    "event": "request", "id": request_id, "method": scope["method"], "path": scope["path"],
                    "status": seen["status"], "ms": round((time.perf_counter() - start) * 1e3, 1),
                    "bytes": seen["bytes"], "client": f"{client[0]}:{client[1]}" if client else None}))


class BearerAuth:
    """Every route except the open ones needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: tuple[str, ...] = ("/health",)) -> None:
        self.app = app
        self.key = f"Bearer {api_key}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        message = ("missing API key: send it as 'Authorization: Bearer KEY'" if not given
                   else "incorrect API key provided")
        response = APIError(401, message, code="invalid_api_key").response(
            headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, by Content-Length or while reading."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = APIError(413, f"the request body is larger than {self.limit} bytes").response()
            await response(scope, receive, send)
            return
        seen = 0

        async def receiving() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # chunked bodies have no Content-Length to check up front
                    raise HTTPException(413, f"the request body is larger than {self.limit} bytes")
            return message

        await self.app(scope, receiving, send)
