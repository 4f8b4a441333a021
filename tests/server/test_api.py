"""The endpoints as the official openai client sees them."""

from __future__ import annotations

import httpx
import pytest

GREEDY = {"temperature": 0}
CHAT = [{"role": "system", "content": "You write code."}, {"role": "user", "content": "def the print"}]


def chat_text(client, messages=CHAT, **kwargs) -> str:
    response = client.chat.completions.create(model="tiny", messages=messages, **GREEDY, **kwargs)
    return response.choices[0].message.content


def test_chat_completion(server):
    response = server.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, **GREEDY)
    choice = response.choices[0]
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    timings = response.model_extra["timings"]
    assert timings["predicted_n"] == response.usage.completion_tokens
    assert 0 <= timings["draft_n_accepted"] <= timings["draft_n"]
    assert timings["cache_n"] + timings["prompt_n"] == response.usage.prompt_tokens


def test_completion_respects_max_tokens(server):
    response = server.client().completions.create(model="tiny", prompt="import self", max_tokens=7, **GREEDY)
    assert response.object == "text_completion"
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 7
    assert response.choices[0].text


def test_streamed_chat_equals_whole_answer(server):
    client = server.client()
    whole = chat_text(client, max_tokens=20)
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens <= 20 and usage_chunk.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert "draft_n" in usage_chunk.model_extra["timings"]


def test_streamed_completion_ends_with_done(server):
    body = {"prompt": "for the", "max_tokens": 9, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    whole = server.client().completions.create(model="tiny", prompt="for the", max_tokens=9, **GREEDY)
    stream = server.client().completions.create(model="tiny", prompt="for the", max_tokens=9, stream=True,
                                                **GREEDY)
    assert "".join(c.choices[0].text for c in stream) == whole.choices[0].text


def test_stop_string_ends_the_answer_before_it(server):
    client = server.client()
    full = client.completions.create(model="tiny", prompt="def the", max_tokens=40, **GREEDY).choices[0].text
    stop = full[10:13]
    assert len(stop) == 3
    cut = client.completions.create(model="tiny", prompt="def the", max_tokens=40, stop=[stop, "zzzz"],
                                    **GREEDY)
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="def the", max_tokens=40, stop=stop,
                                         stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_echo_prepends_the_prompt(server):
    response = server.client().completions.create(model="tiny", prompt="return self", max_tokens=4, echo=True,
                                                  **GREEDY)
    assert response.choices[0].text.startswith("return self")


def test_speculation_off_gives_the_same_greedy_text(server):
    client = server.client()
    spec = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=30, **GREEDY)
    plain = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=30,
                                           extra_body={"speculation": False}, **GREEDY)
    lookup = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=30,
                                            extra_body={"speculation": {"drafter": "lookup"}}, **GREEDY)
    assert plain.choices[0].message.content == spec.choices[0].message.content
    assert lookup.choices[0].message.content == spec.choices[0].message.content
    assert plain.model_extra["timings"]["draft_n"] == 0
    assert plain.model_extra["timings"]["drafter"] == "none"


def test_logit_bias_forces_and_bans_tokens(server, tiny_backend):
    client = server.client()
    forced = tiny_backend.tokenize(" the", add_special=False)
    assert len(forced) == 1
    response = client.completions.create(model="tiny", prompt="import", max_tokens=5,
                                         logit_bias={str(forced[0]): 100}, **GREEDY)
    assert response.choices[0].text == " the" * 5
    first = client.completions.create(model="tiny", prompt="import", max_tokens=1, **GREEDY).choices[0].text
    token = tiny_backend.tokenize(first, add_special=False)
    assert len(token) == 1
    banned = client.completions.create(model="tiny", prompt="import", max_tokens=1,
                                       logit_bias={str(token[0]): -100}, **GREEDY)
    assert banned.choices[0].text != first


def test_sampling_with_a_seed_repeats_with_or_without_speculation(server):
    """The sampler's randomness is fixed per (seed, position), so neither the drafts nor what the
    drafters learnt between requests change a seeded text."""
    client = server.client()
    kwargs = {"model": "tiny", "prompt": "for", "max_tokens": 16, "temperature": 0.9, "top_p": 0.95,
              "seed": 7, "presence_penalty": 0.5, "frequency_penalty": 0.2}
    plain = {"top_k": 40, "min_p": 0.01, "speculation": False}
    first = client.completions.create(**kwargs, extra_body=plain)
    texts = [client.completions.create(**kwargs, extra_body={**plain, "speculation": spec}).choices[0].text
             for spec in (False, True, {"drafter": "recycling", "max_draft_tokens": 8}, True)]
    assert texts == [first.choices[0].text] * 4
    assert first.usage.completion_tokens > 0
    other = client.completions.create(**{**kwargs, "seed": 8}, extra_body=plain)
    assert other.choices[0].text != first.choices[0].text


def test_continued_conversation_reuses_the_cached_prefix(server):
    client = server.client()
    first = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, **GREEDY)
    history = [*CHAT, {"role": "assistant", "content": first.choices[0].message.content},
               {"role": "user", "content": "import self"}]
    second = client.chat.completions.create(model="tiny", messages=history, max_tokens=10, **GREEDY)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens
    assert second.model_extra["timings"]["prompt_n"] == second.usage.prompt_tokens - cached


def test_models_health_and_metrics(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    before = metric(server, "localspec_generated_tokens_total")
    server.client().completions.create(model="tiny", prompt="print", max_tokens=5, **GREEDY)
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(server, "localspec_generated_tokens_total") == before + 5
    for name in ("localspec_spec_draft_tokens_total", "localspec_spec_accepted_tokens_total",
                 "localspec_spec_accepted_per_step_bucket", "localspec_prompt_tokens_total",
                 'localspec_http_responses_total{route="/v1/completions",status="200"}'):
        assert name in text


def metric(server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_prompt_longer_than_the_context_is_a_clear_400(server, path):
    long_text = "print the " * 400
    body = ({"messages": [{"role": "user", "content": long_text}]} if "chat" in path
            else {"prompt": long_text})
    response = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "context holds 512 tokens" in error["message"]


def test_a_long_single_stop_string_is_accepted(server):
    stop = "a stop string longer than sixteen characters"
    response = server.client().completions.create(model="tiny", prompt="def", max_tokens=3, stop=stop,
                                                  **GREEDY)
    assert 0 < response.usage.completion_tokens <= 3
