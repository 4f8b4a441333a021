"""`create_app`: the FastAPI application around one session, with everything it needs built here."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from localspec.server.config import ServerConfig
from localspec.server.errors import install_error_handlers
from localspec.server.metrics import HttpCounters
from localspec.server.middleware import AccessLog, BearerAuth, BodyLimit
from localspec.server.routes import build_router
from localspec.session import Session

log = logging.getLogger("localspec.server")


def create_app(config: ServerConfig, session: Session) -> FastAPI:
    """The app. Its lifespan starts the session (the model loads in the background, /health says
    503 until it is ready) and closes it at shutdown, after in-flight requests have ended."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        session.start()
        log.info("serving %s; the model is loading in the background", config.model_id)
        try:
            yield
        finally:
            await run_in_threadpool(session.close)
            log.info("stopped")

    app = FastAPI(title="localspec", version="1", lifespan=lifespan,
                  summary="OpenAI-compatible completions with lossless speculative decoding")
    http = HttpCounters()
    install_error_handlers(app)
    app.include_router(build_router(session, config, http))
    # add_middleware wraps: the last added runs first. Order, outermost first:
    # access log -> CORS (answers preflights itself) -> auth -> body limit -> routes.
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(BearerAuth, api_key=config.api_key)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(AccessLog, counters=http)
    return app
