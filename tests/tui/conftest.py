"""Chat app fixtures: the demo model on one thread, a history file per test, fixed memory numbers."""

from __future__ import annotations

import asyncio
import functools
import threading
from functools import partial
from pathlib import Path

import pytest

from localspec.engine import Engine
from localspec.errors import BackendError
from localspec.models import choose_model
from localspec.settings import BackendSettings
from tui import ChatApp, ChatOptions
from tui.chatmodel import ChatModel, load_llamacpp
from tui.status import MemoryUse

SETTINGS = BackendSettings(n_ctx=1024, n_threads=1)
FIXED_MEMORY = MemoryUse(rss=96 << 20, budget=8 << 30, budget_label="RAM")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return choose_model(None).path


class GatedBackend:
    """A real backend whose verify steps stop at a gate after `free_steps`, so a test can act mid-answer."""

    def __init__(self, backend, free_steps: int) -> None:
        self._backend = backend
        self.free_steps = free_steps
        self.calls = 0
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def verify(self, root, tree):
        self.calls += 1
        if self.calls > self.free_steps:
            self.gate.wait(timeout=30)
        return self._backend.verify(root, tree)


class FailingBackend(GatedBackend):
    def verify(self, root, tree):
        raise BackendError("llama_decode failed with status -3: out of memory")


def wrapped_loader(wrap):
    """A loader that puts `wrap(backend)` between the engine and the real backend; keeps the wrapper."""
    made = []

    def load(path: Path) -> ChatModel:
        model = load_llamacpp(path, SETTINGS)
        wrapper = wrap(model.backend)
        made.append(wrapper)
        return ChatModel(path, wrapper, Engine(wrapper))

    load.made = made
    return load


@pytest.fixture()
def make_app(tmp_path, demo_model):
    def make(loader=None, history: Path | None = None) -> ChatApp:
        options = ChatOptions(model=demo_model, history_path=history or tmp_path / "chat.sqlite3",
                              config_dir=tmp_path / "config", n_ctx=SETTINGS.n_ctx)
        return ChatApp(options, load_model=loader or partial(load_llamacpp, settings=SETTINGS),
                       memory=lambda: FIXED_MEMORY)
    return make


async def until(pilot, condition, steps: int = 3000) -> None:
    """Let the app run until `condition()` holds (no timing is asserted; the cap only ends a hang)."""
    for _ in range(steps):
        if condition():
            return
        await pilot.pause(0.01)
    raise AssertionError("the app never reached the expected state")


async def ready(app, pilot) -> None:
    await until(pilot, lambda: app.model is not None)
    await pilot.pause()


async def answered(app, pilot) -> None:
    await until(pilot, lambda: not app.generating)
    await pilot.pause()


async def send(app, pilot, text: str) -> None:
    app.prompt.focus()
    app.prompt.text = text
    await pilot.press("enter")
    await pilot.pause()


async def first_turn(app, pilot, text: str) -> None:
    """The model loaded, `text` sent and answered."""
    await ready(app, pilot)
    await send(app, pilot, text)
    await answered(app, pilot)


def async_test(test):
    """Run an async test body with asyncio (no async pytest plugin is a dependency)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))

    return run
