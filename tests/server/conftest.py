"""Real uvicorn servers on loopback (in a thread) around the tiny test model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import openai
import pytest
import uvicorn

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.engine import Engine
from localspec.server import ServerConfig, create_app
from localspec.session import LoadedModel, Session
from localspec.settings import BackendSettings

# f32 KV: outputs do not depend on how the cache was filled (prefix reuse, batch shapes)
SETTINGS = BackendSettings(n_ctx=512, n_threads=1, kv_type="f32")


class SlowBackend:
    """The real backend, but every verify step takes a few milliseconds longer, so a long
    generation lasts long enough to be interrupted whatever the machine's speed."""

    def __init__(self, backend: LlamaCppBackend, delay: float) -> None:
        self._backend = backend
        self._delay = delay

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def verify(self, root, tree):
        time.sleep(self._delay)
        return self._backend.verify(root, tree)


def loader(model_path, delay: float = 0.0) -> Callable[[], LoadedModel]:
    def load() -> LoadedModel:
        backend = LlamaCppBackend(model_path, SETTINGS)
        engine = Engine(SlowBackend(backend, delay) if delay else backend)
        return LoadedModel(backend, engine)
    return load


@dataclass
class LiveServer:
    url: str
    session: Session
    config: ServerConfig
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.config.api_key or "unused")
        return openai.OpenAI(base_url=f"{self.url}/v1", max_retries=0, timeout=60, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_server(config: ServerConfig, session: Session) -> LiveServer:
    app = create_app(config, session)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    assert session.wait_ready(30), session.error
    return LiveServer(f"http://127.0.0.1:{port}", session, config, server, thread)


@pytest.fixture(scope="session")
def make_server(tiny_model) -> Iterator[Callable[..., LiveServer]]:
    """Start a server on the tiny model; every server started is stopped at the end."""
    started: list[LiveServer] = []

    def make(delay: float = 0.0, **config) -> LiveServer:
        config.setdefault("model_id", "tiny")
        config.setdefault("max_body_bytes", 256 * 1024)
        server = start_server(ServerConfig(**config), Session(loader(tiny_model, delay)))
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(make_server) -> LiveServer:
    """The shared server: tests compare counters by differences, never absolute values."""
    return make_server()


@pytest.fixture(scope="session")
def slow_server(make_server) -> LiveServer:
    """Each step takes >= 5 ms: a 400-token answer lasts seconds, long enough to walk away from."""
    return make_server(delay=0.005)
