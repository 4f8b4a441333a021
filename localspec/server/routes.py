"""The endpoints, built around one session and config (no module-level state)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from localspec.server.config import ServerConfig
from localspec.server.errors import APIError, from_domain
from localspec.server.metrics import HttpCounters, render
from localspec.server.params import Prepared, prepare_chat, prepare_completion
from localspec.server.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorBody,
    ModelCard,
    ModelList,
)
from localspec.server.streaming import Reply, collect, disconnected, sse_stream, submit
from localspec.session import Failed, Session, State

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 413, 503)}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def build_router(session: Session, config: ServerConfig, http: HttpCounters) -> APIRouter:
    router = APIRouter()
    started = int(time.time())

    def ready_backend():
        if session.state is not State.READY:
            message = ("the model is still loading" if session.state is State.LOADING
                       else f"the model is not available ({session.state.value})")
            raise APIError(503, message, type="server_error", code="model_not_ready")
        return session.backend

    async def respond(request: Request, prepared: Prepared, reply: Reply, stream: bool):
        try:
            _, events = submit(session, prepared)
        except Exception as exc:
            raise from_domain(exc) from None
        if stream:
            return StreamingResponse(sse_stream(reply, events), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        result = asyncio.ensure_future(collect(events))
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not result.done():  # the client left: cancelling closes `events`, which cancels the job
                result.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await result  # until then the task is only asked to stop, not cancelled()
        if result.cancelled():
            return JSONResponse({}, status_code=499)  # nobody reads it
        text, final = result.result()
        if isinstance(final, Failed):
            raise from_domain(final.error)
        return JSONResponse(reply.whole(text, final))

    @router.post("/v1/chat/completions", responses={200: {"model": ChatCompletion}, **ERRORS})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        backend = ready_backend()
        prepared = await run_in_threadpool(prepare_chat, body, backend, config)
        include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        return await respond(request, prepared, Reply(True, config.model_id, include_usage), body.stream)

    @router.post("/v1/completions", responses={200: {"model": Completion}, **ERRORS})
    async def completions(body: CompletionRequest, request: Request):
        backend = ready_backend()
        prepared = await run_in_threadpool(prepare_completion, body, backend, config)
        include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        reply = Reply(False, config.model_id, include_usage, prepared.echo)
        return await respond(request, prepared, reply, body.stream)

    @router.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=config.model_id, created=started)])

    @router.get("/health")
    async def health():
        state = session.state
        body = {"status": "ok" if state is State.READY else state.value}
        if state is State.FAILED and session.error is not None:
            body["error"] = str(session.error)
        return JSONResponse(body, status_code=200 if state is State.READY else 503)

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(render(session, http), media_type="text/plain; version=0.0.4")

    return router
