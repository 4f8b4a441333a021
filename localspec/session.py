"""A loaded model shared by many requests: one worker thread runs them one at a time, in order.

The engine is not thread-safe, so a single worker thread owns it from loading to closing.
Requests (`Job`s) wait in a FIFO queue and are served strictly in arrival order, each to the
end (or until cancelled) before the next starts: fair, and the KV prefix of consecutive requests
is reused by the engine. Anyone may submit, cancel or read the counters from any thread.
Events reach the submitter through a listener called on the worker thread, so any front end
(HTTP server, chat app, script) can bridge them into its own event loop.
Nothing here knows about HTTP.
"""

from __future__ import annotations

import copy
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from localspec.backends.base import Backend
from localspec.engine import Engine, common_prefix_length
from localspec.errors import InvalidSettingsError, LocalspecError
from localspec.generate import SpecStats, stream_generate
from localspec.settings import GenerationSettings
from localspec.tree import DraftTree

log = logging.getLogger("localspec.session")

MAX_LOGIT_BIAS = 100.0  # OpenAI's range: -100 bans a token, +100 all but forces it


@dataclass
class LoadedModel:
    """What a session's loader returns; `on_close` runs on the worker thread before the backend closes."""

    backend: Backend
    engine: Engine
    on_close: Callable[[], None] | None = None


class State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class Finished:
    """The last event of a job that ran (or was cancelled before it ran: stats then count nothing)."""

    finish_reason: str  # "stop", "length", "context" (window full) or "cancelled"
    stats: SpecStats  # a copy, safe to read from any thread
    cached_tokens: int  # prompt tokens whose KV was reused from the previous request
    queued_seconds: float


@dataclass(frozen=True)
class Failed:
    """The last event of a job the engine refused or failed on."""

    error: Exception


Event = str | Finished | Failed  # text pieces, then exactly one Finished or Failed
Listener = Callable[[Event], None]


class BusyError(LocalspecError):
    """The queue is full, the model is not loaded, or the session is closing."""


class Job:
    """One generation request. Events go to the listener, or to `events()` when none was given."""

    def __init__(self, prompt: Sequence[int], settings: GenerationSettings,
                 logit_bias: Mapping[int, float], listener: Listener | None) -> None:
        self.prompt = list(prompt)
        self.settings = settings
        self.logit_bias = dict(logit_bias)
        self.submitted = time.perf_counter()
        self._cancelled = threading.Event()
        self._inbox: queue.SimpleQueue[Event] | None = None
        if listener is None:
            self._inbox = queue.SimpleQueue()
            listener = self._inbox.put
        self._listener = listener

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop this job: skipped if still queued, stopped after the current step if running."""
        self._cancelled.set()

    def emit(self, event: Event) -> None:
        try:
            self._listener(event)
        except Exception:  # a listener whose consumer went away (closed loop) must not stop the worker
            self.cancel()

    def events(self) -> Iterator[Event]:
        """Blocking iteration over this job's events (only without a listener)."""
        if self._inbox is None:
            raise RuntimeError("this job reports to its listener")
        while True:
            event = self._inbox.get()
            yield event
            if not isinstance(event, str):
                return


@dataclass
class Counters:
    """Totals over every finished job, for metrics. `accepted_at_depth[k]`: steps accepting > k drafts."""

    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    queued_seconds: float = 0.0
    steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_step: dict[int, int] = field(default_factory=dict)
    accepted_at_depth: list[int] = field(default_factory=list)

    def add_step(self, accepted: int) -> None:
        self.accepted_per_step[accepted] = self.accepted_per_step.get(accepted, 0) + 1
        if accepted > len(self.accepted_at_depth):
            self.accepted_at_depth.extend([0] * (accepted - len(self.accepted_at_depth)))
        for depth in range(accepted):
            self.accepted_at_depth[depth] += 1

    def add_job(self, finished: Finished) -> None:
        s = finished.stats
        if finished.finish_reason == "cancelled":
            self.cancelled += 1
        else:
            self.completed += 1
        self.prompt_tokens += s.prompt_tokens
        self.cached_tokens += finished.cached_tokens
        self.generated_tokens += s.tokens
        self.prefill_seconds += s.prefill_seconds
        self.decode_seconds += s.seconds
        self.queued_seconds += finished.queued_seconds
        self.steps += s.steps
        self.draft_tokens += s.draft_tokens
        self.accepted_tokens += s.accepted_tokens

    def copy(self) -> Counters:
        return replace(self, accepted_per_step=dict(self.accepted_per_step),
                       accepted_at_depth=list(self.accepted_at_depth))


class BiasedBackend:
    """The backend with a fixed logit bias added to every row `verify` returns.

    Every lossless rule judges these logits, so biased sampling stays exact; all else is delegated.
    """

    def __init__(self, backend: Backend, bias: Mapping[int, float]) -> None:
        self._backend = backend
        self._ids = np.fromiter(bias.keys(), np.int64, len(bias))
        self._values = np.fromiter(bias.values(), np.float32, len(bias))

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def verify(self, root: int, tree: DraftTree) -> np.ndarray:
        logits = np.array(self._backend.verify(root, tree), dtype=np.float32)
        logits[:, self._ids] += self._values
        return logits


def check_logit_bias(bias: Mapping[int, float], n_vocab: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for token, value in bias.items():
        if not 0 <= token < n_vocab:
            raise InvalidSettingsError(
                f"logit_bias token {token} is not in the vocabulary (0..{n_vocab - 1})")
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise InvalidSettingsError(f"logit_bias values must be in [-100, 100], got {value}")
        out[int(token)] = float(value)
    return out


class Session:
    """A model loaded in the background and served one job at a time by one worker thread."""

    def __init__(self, load: Callable[[], LoadedModel], max_queue: int = 64,
                 on_state: Callable[[State], None] | None = None) -> None:
        """`load` runs on the worker thread; `on_state` is told each state change (keep it quick)."""
        self._load = load
        self._max_queue = max_queue
        self._on_state = on_state
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()  # guards the fields below
        self._state = State.LOADING
        self._error: Exception | None = None
        self._model: LoadedModel | None = None
        self._pending: list[Job] = []  # queued or running, for cancel-all at close
        self._running: Job | None = None
        self._counters = Counters()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start loading and serving in the worker thread (idempotent)."""
        with self._lock:
            if self._thread is not None or self._state is State.CLOSED:
                return
            self._thread = threading.Thread(target=self._work, name="localspec-session", daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the model is loaded; False on timeout or when loading failed."""
        self._ready.wait(timeout)
        return self._state is State.READY

    def close(self, timeout: float | None = 30.0) -> None:
        """Cancel queued and running jobs, stop the worker and free the model."""
        with self._lock:
            if self._state is State.CLOSED:
                return
            self._set_state(State.CLOSED)
            for job in self._pending:
                job.cancel()
            thread = self._thread
        self._jobs.put(None)
        self._ready.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def state(self) -> State:
        return self._state

    @property
    def error(self) -> Exception | None:
        return self._error

    @property
    def backend(self) -> Backend:
        """The loaded backend, for tokenizing (thread-safe) and its constants; never for decoding."""
        if self._model is None:
            raise BusyError("the model is not loaded yet")
        return self._model.backend

    # -- requests -------------------------------------------------------------------------------

    def submit(self, prompt: Sequence[int], settings: GenerationSettings,
               logit_bias: Mapping[int, float] | None = None, listener: Listener | None = None) -> Job:
        """Queue a job after checking it against the model; raises before queueing if it cannot run."""
        backend = self.backend
        self._model.engine.check_prompt(prompt)  # empty or too long: refuse now, not mid-stream
        bias = check_logit_bias(logit_bias or {}, backend.n_vocab)
        job = Job(prompt, settings, bias, listener)
        with self._lock:
            if self._state is not State.READY:
                raise BusyError(f"the model is {self._state.value}")
            if len(self._pending) >= self._max_queue:
                raise BusyError(f"{len(self._pending)} requests are already waiting; try again later")
            self._pending.append(job)
        self._jobs.put(job)
        return job

    def counters(self) -> Counters:
        with self._lock:
            return self._counters.copy()

    def load_status(self) -> tuple[int, bool]:
        """(jobs waiting, whether one is running)."""
        with self._lock:
            running = self._running is not None
            return len(self._pending) - running, running

    # -- worker thread --------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self._state = state
        if self._on_state is not None:
            self._on_state(state)

    def _work(self) -> None:
        try:
            model = self._load()
        except Exception as exc:
            log.error("loading the model failed: %s", exc)
            with self._lock:
                self._error = exc
                if self._state is not State.CLOSED:
                    self._set_state(State.FAILED)
            self._ready.set()
            return
        with self._lock:
            self._model = model
            if self._state is State.LOADING:
                self._set_state(State.READY)
        self._ready.set()
        try:
            while (job := self._jobs.get()) is not None:
                with self._lock:
                    self._running = job
                try:
                    self._serve(model, job)
                finally:
                    with self._lock:
                        self._running = None
                        self._pending.remove(job)
        finally:
            self._shut(model)

    def _shut(self, model: LoadedModel) -> None:
        try:
            if model.on_close is not None:
                model.on_close()
        except Exception as exc:
            log.warning("saving model state at close failed: %s", exc)
        finally:
            model.backend.close()

    def _serve(self, model: LoadedModel, job: Job) -> None:
        started = time.perf_counter()
        stats = SpecStats(drafter=job.settings.drafter, prompt_tokens=len(job.prompt))
        if job.cancelled:
            self._finish(job, Finished("cancelled", stats, 0, started - job.submitted))
            return
        engine = model.engine
        if job.logit_bias:
            engine = copy.copy(engine)  # shares drafters and budget; only this request sees the bias
            engine.backend = BiasedBackend(model.backend, job.logit_bias)
        cached = common_prefix_length(model.backend.tokens, job.prompt[:-1])
        finish = "cancelled"
        steps = accepted = 0
        stream = stream_generate(engine, job.prompt, job.settings)
        try:
            for chunk in stream:
                stats = chunk.stats
                if stats.steps == steps + 1:  # one chunk per step; record what this step accepted
                    with self._lock:
                        self._counters.add_step(stats.accepted_tokens - accepted)
                steps, accepted = stats.steps, stats.accepted_tokens
                if chunk.text:
                    job.emit(chunk.text)
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                    break
                if job.cancelled:
                    break
        except Exception as exc:
            if not isinstance(exc, LocalspecError):
                log.exception("generation failed")
            model.backend.truncate(0)  # the cache may not match its token list any more
            with self._lock:
                self._counters.failed += 1
            job.emit(Failed(exc))
            return
        finally:
            stream.close()
        stats = replace(stats, by_source=dict(stats.by_source))
        self._finish(job, Finished(finish, stats, cached, started - job.submitted))

    def _finish(self, job: Job, finished: Finished) -> None:
        with self._lock:
            self._counters.add_job(finished)
        job.emit(finished)
