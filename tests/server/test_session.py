"""The session on its own (no HTTP), over the deterministic fake backend."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from localspec.engine import Engine
from localspec.errors import ContextOverflowError, InvalidSettingsError
from localspec.session import BiasedBackend, BusyError, Failed, Finished, LoadedModel, Session, State
from localspec.settings import GenerationSettings, SamplingSettings
from localspec.tree import DraftTree
from tests.helpers import FakeBackend

TABLE = [(t + 1) % 50 or 1 for t in range(50)]  # token t is followed by t + 1; 0 (end) never comes


class GatedBackend(FakeBackend):
    """Each verify waits for the test to open the gate, so the test decides when steps happen."""

    def __init__(self) -> None:
        super().__init__(TABLE, n_ctx=256)
        self.gate = threading.Semaphore(0)
        self.closed = False

    def verify(self, root, tree):
        self.gate.acquire()
        return super().verify(root, tree)

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def gated():
    backend = GatedBackend()
    session = Session(lambda: LoadedModel(backend, Engine(backend)), max_queue=3)
    session.start()
    assert session.wait_ready(10)
    yield session, backend
    for _ in range(1000):
        backend.gate.release()
    session.close()


def greedy(n: int, drafter: str = "none") -> GenerationSettings:
    return GenerationSettings(max_tokens=n, drafter=drafter, sampling=SamplingSettings(temperature=0.0))


def final(job):
    events = list(job.events())
    return "".join(e for e in events if isinstance(e, str)), events[-1]


def test_jobs_run_to_the_end_in_arrival_order(gated):
    session, backend = gated
    log = []
    jobs = [session.submit([p], greedy(n), listener=lambda e, p=p: log.append((p, e)))
            for p, n in ((5, 3), (10, 2), (20, 1))]
    with pytest.raises(BusyError):
        session.submit([1], greedy(1))  # the queue holds 3
    for _ in range(6):
        backend.gate.release()
    deadline = time.monotonic() + 30
    while sum(isinstance(e, Finished) for _, e in log) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    owners = [p for p, _ in log]
    assert owners == sorted(owners, key=[5, 10, 20].index)  # no interleaving, arrival order
    assert [e.finish_reason for _, e in log if isinstance(e, Finished)] == ["length"] * 3
    assert "".join(e for p, e in log if p == 5 and isinstance(e, str)).encode() == bytes([6, 7, 8])
    counters = session.counters()
    assert counters.completed == 3 and counters.generated_tokens == 6 and counters.steps == 6
    assert not any(job.cancelled for job in jobs)


def test_cancelled_jobs_stop_or_never_start(gated):
    session, backend = gated
    running = session.submit([5], greedy(100))
    waiting = session.submit([7], greedy(100))
    backend.gate.release()
    waiting.cancel()
    running.cancel()
    backend.gate.release()
    _, last = final(running)
    assert last.finish_reason == "cancelled" and last.stats.tokens < 100
    _, skipped = final(waiting)
    assert skipped.finish_reason == "cancelled" and skipped.stats.tokens == 0 and skipped.stats.steps == 0
    assert session.counters().cancelled == 2
    backend.gate.release()
    _, last = final(session.submit([9], greedy(1)))
    assert last.finish_reason == "length"


def test_consecutive_requests_reuse_the_cached_prefix(gated):
    session, backend = gated
    for _ in range(10):
        backend.gate.release()
    _, first = final(session.submit([3, 4, 5], greedy(2)))
    _, second = final(session.submit([3, 4, 5, 6, 7, 8], greedy(2)))
    assert first.cached_tokens == 0
    assert second.cached_tokens == 4  # 3 4 5 6: the last generated token (7) was never decoded


def test_refused_before_queueing(gated):
    session, _ = gated
    with pytest.raises(ContextOverflowError):
        session.submit(list(range(300)), greedy(1))
    with pytest.raises(InvalidSettingsError):
        session.submit([], greedy(1))
    with pytest.raises(InvalidSettingsError):
        session.submit([1], greedy(1), logit_bias={50: 1.0})
    with pytest.raises(InvalidSettingsError):
        session.submit([1], greedy(1), logit_bias={3: 101.0})


def test_close_cancels_everything_and_frees_the_backend(gated):
    session, backend = gated
    job = session.submit([5], greedy(100))
    session.close(timeout=0.5)  # the running step still waits on the gate
    backend.gate.release()
    session.close()
    _, last = final(job)
    assert last.finish_reason == "cancelled"
    assert backend.closed and session.state is State.CLOSED
    with pytest.raises(BusyError):
        session.submit([5], greedy(1))


def test_a_failing_loader_is_reported():
    def load():
        raise OSError("no such model")

    session = Session(load)
    session.start()
    assert not session.wait_ready(10)
    assert session.state is State.FAILED and "no such model" in str(session.error)
    with pytest.raises(BusyError):
        session.submit([1], greedy(1))
    session.close()


def test_engine_errors_reach_the_job_and_the_session_goes_on():
    class Exploding(FakeBackend):
        def verify(self, root, tree):
            if root == 13:
                raise RuntimeError("boom")
            return super().verify(root, tree)

    backend = Exploding(TABLE, n_ctx=256)
    session = Session(lambda: LoadedModel(backend, Engine(backend)))
    session.start()
    assert session.wait_ready(10)
    _, last = final(session.submit([13], greedy(3)))
    assert isinstance(last, Failed) and "boom" in str(last.error)
    _, last = final(session.submit([1], greedy(3)))
    assert isinstance(last, Finished) and last.stats.tokens == 3
    assert session.counters().failed == 1
    session.close()


def test_logit_bias_is_added_to_every_verified_row():
    backend = FakeBackend(TABLE, n_ctx=64)
    biased = BiasedBackend(backend, {7: 100.0, 8: -5.0})
    tree = DraftTree(np.array([2, 3]), np.array([-1, 0]), "test")
    plain = np.array(backend.verify(1, tree))
    logits = biased.verify(1, tree)
    assert np.allclose(logits[:, 7], plain[:, 7] + 100) and np.allclose(logits[:, 8], plain[:, 8] - 5)
    assert np.array_equal(np.delete(logits, [7, 8], axis=1), np.delete(plain, [7, 8], axis=1))
    assert biased.n_ctx == 64 and biased.tokens is backend.tokens


def test_biased_greedy_generation_follows_the_bias():
    backend = FakeBackend(TABLE, n_ctx=64)
    session = Session(lambda: LoadedModel(backend, Engine(backend)))
    session.start()
    assert session.wait_ready(10)
    job = session.submit([1], greedy(4, drafter="lookup"), logit_bias={42: 100.0})
    text, last = final(job)
    assert text.encode() == bytes([42] * 4)
    session.close()
