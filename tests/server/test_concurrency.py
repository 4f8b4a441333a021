"""Many clients at once, clients that walk away, and routes that answer while generating."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import httpx
import openai

from localspec.session import State

PROMPTS = ["def the", "import self", "for print", "return the", "self = ", "in the", "print()", "    for"]


def test_eight_parallel_streams_equal_the_same_requests_one_at_a_time(server):
    def request(client, prompt):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                              max_tokens=24, temperature=0, stream=True)

    one_at_a_time = ["".join(c.choices[0].delta.content or "" for c in request(server.client(), p)
                             if c.choices) for p in PROMPTS]

    async def all_at_once():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)

        async def one(prompt):
            stream = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0,
                stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        async with client:
            return await asyncio.gather(*(one(p) for p in PROMPTS))

    assert asyncio.run(all_at_once()) == one_at_a_time
    assert all(one_at_a_time)


def stream_lines(url: str, body: dict, n_lines: int) -> list[str]:
    """Read the first data lines of a stream, then hang up."""
    lines = []
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                lines.append(line)
            if len(lines) >= n_lines:
                break
    return lines


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def wait_idle(session) -> None:
    wait_for(lambda: session.load_status() == (0, False))


LONG = {"prompt": "def the", "max_tokens": 400, "temperature": 0, "stream": True,
        "speculation": False}  # plain decoding: one token per (slowed) step, so 400 steps last >= 2 s


def test_disconnect_mid_stream_cancels_and_frees_the_slot(slow_server):
    session = slow_server.session
    before = session.counters()
    lines = stream_lines(f"{slow_server.url}/v1/completions", LONG, 3)
    assert len(lines) == 3
    wait_idle(session)
    after = session.counters()
    assert after.cancelled == before.cancelled + 1
    assert after.generated_tokens - before.generated_tokens < 400
    response = slow_server.client().completions.create(model="tiny", prompt="print", max_tokens=3,
                                                       temperature=0)
    assert response.usage.completion_tokens == 3


def test_a_queued_request_whose_client_left_is_skipped(slow_server):
    session = slow_server.session
    before = session.counters()
    first = threading.Thread(target=stream_lines, args=(f"{slow_server.url}/v1/completions", LONG, 150))
    first.start()
    wait_for(lambda: session.load_status() == (0, True))
    # the second client leaves before its turn: its job is dropped without running
    with httpx.stream("POST", f"{slow_server.url}/v1/completions", json=LONG, timeout=30) as response:
        assert response.status_code == 200
        wait_for(lambda: session.load_status() == (1, True))
    first.join(30)
    wait_idle(session)
    after = session.counters()
    assert after.cancelled == before.cancelled + 2
    assert after.generated_tokens - before.generated_tokens < 400
    response = slow_server.client().completions.create(model="tiny", prompt="print", max_tokens=3,
                                                       temperature=0)
    assert response.usage.completion_tokens == 3


def test_non_streaming_client_timeout_cancels_its_generation(slow_server, caplog):
    session = slow_server.session
    before = session.counters()
    body = {**LONG, "stream": False}
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(f"{slow_server.url}/v1/completions", json=body, timeout=0.5)
    wait_idle(session)
    after = session.counters()
    assert after.cancelled == before.cancelled + 1
    assert after.generated_tokens - before.generated_tokens < 400
    time.sleep(0.2)  # the handler ends after the job does
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text  # no 500, no traceback


def test_health_and_metrics_answer_while_generating(slow_server):
    session = slow_server.session
    seen = {}

    def probe():
        wait_for(lambda: session.load_status()[1])
        seen["health"] = httpx.get(f"{slow_server.url}/health", timeout=5).status_code
        seen["metrics"] = httpx.get(f"{slow_server.url}/metrics", timeout=5).text
        seen["still_running"] = session.load_status()[1]

    prober = threading.Thread(target=probe)
    prober.start()
    stream_lines(f"{slow_server.url}/v1/completions", {**LONG, "max_tokens": 300}, 100)
    prober.join(30)
    assert seen["health"] == 200
    assert "localspec_requests_running 1" in seen["metrics"]
    assert seen["still_running"]
    assert session.state is State.READY
