"""Bad requests get OpenAI-style 4xx errors, auth is enforced, and the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
USER = [{"role": "user", "content": "def"}]

MALFORMED = [
    (CHAT, b"{", "not JSON"),
    (CHAT, b"[]", "a JSON array"),
    (CHAT, b'"hello"', "a JSON string"),
    (CHAT, {}, "no messages"),
    (CHAT, {"messages": []}, "empty messages"),
    (CHAT, {"messages": "hi"}, "messages not a list"),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, "unknown role"),
    (CHAT, {"messages": [{"content": "x"}]}, "no role"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "content a number"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "image content"),
    (CHAT, {"messages": USER, "temperature": -1}, "negative temperature"),
    (CHAT, {"messages": USER, "temperature": "hot"}, "temperature a word"),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "NaN temperature"),
    (CHAT, {"messages": USER, "top_p": 0}, "top_p zero"),
    (CHAT, {"messages": USER, "top_k": -3}, "negative top_k"),
    (CHAT, {"messages": USER, "max_tokens": 0}, "zero max_tokens"),
    (CHAT, {"messages": USER, "max_completion_tokens": -5}, "negative max_completion_tokens"),
    (CHAT, {"messages": USER, "max_tokens": 1.5}, "fractional max_tokens"),
    (CHAT, {"messages": USER, "n": 2}, "n > 1"),
    (CHAT, {"messages": USER, "stop": ["a"] * 17}, "too many stop strings"),
    (CHAT, {"messages": USER, "stop": 5}, "stop a number"),
    (CHAT, {"messages": USER, "presence_penalty": 3}, "presence_penalty out of range"),
    (CHAT, {"messages": USER, "logit_bias": {"abc": 1}}, "logit_bias key not a token id"),
    (CHAT, {"messages": USER, "logit_bias": {"1": 500}}, "logit_bias value out of range"),
    (CHAT, {"messages": USER, "logit_bias": {"99999": 1}}, "logit_bias token not in vocabulary"),
    (CHAT, {"messages": USER, "speculation": {"drafter": "magic"}}, "unknown drafter"),
    (CHAT, {"messages": USER, "speculation": "yes"}, "speculation a string"),
    (CHAT, {"messages": USER, "speculation": {"max_draft_tokens": 999}}, "draft budget too large"),
    (CHAT, {"messages": USER, "logprobs": True}, "logprobs"),
    (CHAT, {"messages": USER, "response_format": {"type": "json_object"}}, "json mode"),
    (CHAT, {"messages": USER, "stream_options": "yes please"}, "stream_options a string"),
    (TEXT, {}, "no prompt"),
    (TEXT, {"prompt": []}, "empty token prompt"),
    (TEXT, {"prompt": [-1, 5]}, "negative token id"),
    (TEXT, {"prompt": [10 ** 9]}, "token id past the vocabulary"),
    (TEXT, {"prompt": ["a", "b"]}, "two prompts"),
    (TEXT, {"prompt": {"text": "a"}}, "prompt an object"),
    (TEXT, b'{"prompt": "\\ud800"}', "lone surrogate"),
    (TEXT, {"prompt": "x", "suffix": "y"}, "suffix"),
    (TEXT, {"prompt": "x", "best_of": 3}, "best_of"),
    (TEXT, {"prompt": "x", "logprobs": 2}, "logprobs"),
    (TEXT, {"prompt": "print " * 600}, "prompt past the context"),
]


@pytest.mark.parametrize(("path", "body", "why"), MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed_body_gets_a_4xx_and_the_server_keeps_serving(server, path, body, why):
    url = f"{server.url}{path}"
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == 400, (why, response.text)
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    ok = httpx.post(f"{server.url}{TEXT}", json={"prompt": "def", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200


@pytest.mark.parametrize(("stop", "says"), [(["s"] * 17, "at most 16 stop strings, got 17"),
                                             (5, "must be a string or a list of strings"),
                                             (["a", 3], "must be a string or a list of strings")])
def test_a_bad_stop_says_what_is_wrong_with_it(server, stop, says):
    response = httpx.post(f"{server.url}{TEXT}", json={"prompt": "x", "stop": stop}, timeout=30)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "stop" and error["message"] == f"stop: {says}"


def test_text_that_is_not_unicode_names_its_field(server):
    response = httpx.post(f"{server.url}{TEXT}", content=b'{"prompt": "\\ud800abc"}',
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    body = b'{"messages": [{"role": "user", "content": "\\udfff"}]}'
    response = httpx.post(f"{server.url}{CHAT}", content=body, headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_unknown_fields_are_ignored(server):
    body = {"messages": USER, "max_tokens": 2, "temperature": 0, "frobnicate": {"x": 1}, "tools": [],
            "parallel_tool_calls": False, "store": True, "metadata": {"a": "b"}}
    assert httpx.post(f"{server.url}{CHAT}", json=body).status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), [("GET", CHAT, 405), ("POST", "/v1/nothing", 404),
                                                        ("DELETE", "/health", 405)])
def test_wrong_route_or_method(server, method, path, status):
    response = httpx.request(method, f"{server.url}{path}")
    assert response.status_code == status
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_body_over_the_limit_is_413(server):
    big = {"prompt": "a" * (server.config.max_body_bytes + 10)}
    response = httpx.post(f"{server.url}{TEXT}", json=big)
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(server.config.max_body_bytes // 1000 + 2):
            yield b" " * 1000

    response = httpx.post(f"{server.url}{TEXT}", content=chunks(),
                          headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.fixture(scope="module")
def locked_server(make_server):
    return make_server(api_key="sekrit", cors_origins=("http://editor.example",))


def test_api_key_is_required_except_for_health(locked_server):
    url = locked_server.url
    assert httpx.get(f"{url}/health").status_code == 200
    for path in ("/v1/models", "/metrics", "/openapi.json"):
        response = httpx.get(f"{url}{path}")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    wrong = locked_server.client(api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    missing = httpx.post(f"{url}{CHAT}", json={"messages": USER, "max_tokens": 2})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    answer = locked_server.client().chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    assert answer.usage.completion_tokens == 2
    assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer sekrit"}).status_code == 200


def test_cors_only_for_the_configured_origin(locked_server, server):
    preflight = {"Origin": "http://editor.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    response = httpx.options(f"{locked_server.url}{CHAT}", headers=preflight)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://editor.example"
    other = httpx.options(f"{locked_server.url}{CHAT}", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    plain = httpx.get(f"{server.url}/health", headers={"Origin": "http://editor.example"})
    assert "access-control-allow-origin" not in plain.headers
