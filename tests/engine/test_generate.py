"""The stream layer: stop strings, end tokens, max tokens, a full context, prefix reuse."""

from __future__ import annotations

import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.chat import Message, encode_chat, render_chat
from localspec.engine import Engine
from localspec.errors import ContextOverflowError, InvalidSettingsError
from localspec.generate import generate, stream_generate
from localspec.settings import BackendSettings, GenerationSettings
from localspec.tree import DraftTree
from tests.helpers import ScriptedDrafter


def plain_text(backend, prompt, n=60) -> str:
    return generate(Engine(backend), prompt, GenerationSettings(max_tokens=n, drafter="none")).text


@pytest.mark.parametrize("drafter", ["none", "lookup"])
def test_stop_string_across_tokens_cuts_output_and_never_leaks(loopy_backend, drafter):
    prompt = loopy_backend.tokenize("import self\n" * 3)
    full = plain_text(loopy_backend, prompt)
    stop = full[7:11]  # a piece of the output, likely spanning tokens
    assert len(stop) == 4
    result = generate(Engine(loopy_backend), prompt,
                      GenerationSettings(max_tokens=60, drafter=drafter, stop=(stop,)))
    assert result.finish_reason == "stop"
    assert result.text == full[: full.find(stop)]
    assert stop not in result.text


def test_max_tokens_is_exact_even_when_a_step_accepts_many(loopy_backend):
    prompt = loopy_backend.tokenize("for x in self: print(x)\n" * 4)
    for n in (1, 2, 7, 33):
        result = generate(Engine(loopy_backend), prompt, GenerationSettings(max_tokens=n))
        assert len(result.tokens) == n and result.finish_reason == "length"


def test_full_context_ends_the_stream_cleanly(tiny_model):
    with LlamaCppBackend(tiny_model, BackendSettings(n_ctx=256, n_threads=1)) as backend:
        prompt = [5] * 200
        result = generate(Engine(backend), prompt, GenerationSettings(max_tokens=500))
        assert result.finish_reason == "context"
        assert len(prompt) + len(result.tokens) == backend.n_ctx + 1  # last token never decoded
        assert backend.kv_pos_max(0) == backend.n_ctx - 1


def test_prompt_longer_than_context_is_a_clear_error(tiny_model):
    with LlamaCppBackend(tiny_model, BackendSettings(n_ctx=256, n_threads=1)) as backend, \
            pytest.raises(ContextOverflowError, match="context"):
        generate(Engine(backend), [5] * 400, GenerationSettings())


def test_context_smaller_than_a_batch_is_rejected():
    with pytest.raises(InvalidSettingsError, match="n_ctx"):
        BackendSettings(n_ctx=1, n_threads=1)


def test_text_that_is_not_utf8_tokenizes_like_replacement_characters(tiny_backend):
    replaced = tiny_backend.tokenize("a\ufffdb\ufffd", add_special=False)
    assert tiny_backend.tokenize("a\udcffb\udcfe", add_special=False) == replaced  # bytes 0xff, 0xfe
    with pytest.raises(InvalidSettingsError, match="surrogate"):  # JSON allows a lone one: not text
        tiny_backend.tokenize("\ud800", add_special=False)


def test_empty_prompt_is_rejected(tiny_backend):
    with pytest.raises(InvalidSettingsError):
        generate(Engine(tiny_backend), [], GenerationSettings())


def test_continuing_a_conversation_reuses_the_cached_prefix(tiny_backend):
    engine = Engine(tiny_backend)
    prompt = tiny_backend.tokenize("def the return self")
    first = generate(engine, prompt, GenerationSettings(max_tokens=10, drafter="none"))
    cached = list(tiny_backend.tokens)
    follow_up = prompt + first.tokens + tiny_backend.tokenize(" in", add_special=False)
    assert cached == follow_up[: len(cached)]
    second = generate(engine, follow_up, GenerationSettings(max_tokens=10, drafter="none"))
    fresh_engine = Engine(tiny_backend)
    tiny_backend.truncate(0)
    again = generate(fresh_engine, follow_up, GenerationSettings(max_tokens=10, drafter="none"))
    assert second.tokens == again.tokens


def test_stream_chunks_add_up_to_the_result(loopy_backend):
    prompt = loopy_backend.tokenize("for x in self: print(x)\n" * 2)
    settings = GenerationSettings(max_tokens=40)
    chunks = list(stream_generate(Engine(loopy_backend), prompt, settings))
    assert all(c.finish_reason is None for c in chunks[:-1]) and chunks[-1].finish_reason
    assert "".join(c.text for c in chunks) == generate(Engine(loopy_backend), prompt, settings).text


def test_chat_template_renders_and_control_tokens_are_parsed(tiny_backend):
    messages = [Message("system", "be brief"), Message("user", "hi")]
    text = render_chat(messages, tiny_backend.chat_template)
    assert text.endswith("<|im_start|>assistant\n")
    tokens = encode_chat(tiny_backend, messages)
    im_start = tiny_backend.tokenize("<|im_start|>", add_special=False, parse_special=True)
    assert len(im_start) == 1 and tokens.count(im_start[0]) == 3


def test_unknown_chat_role_is_rejected():
    with pytest.raises(InvalidSettingsError):
        Message("wizard", "hi")


def test_end_token_inside_an_accepted_draft_ends_output_there():
    from tests.helpers import FakeBackend

    # 65 'A' -> 66 'B' -> 67 'C' -> 0 (end) ; lookup will draft the whole cycle
    table = list(range(1, 128)) + [0]
    table[65], table[66], table[67] = 66, 67, 0
    backend = FakeBackend(table)
    drafter = ScriptedDrafter(lambda h, b: DraftTree.chain([66, 67, 0, 5][:b]))
    result = generate(Engine(backend, {"scripted": drafter}), [65],
                      GenerationSettings(max_tokens=20, drafter="scripted"))
    assert result.text == "BC" and result.finish_reason == "stop"
    assert result.stats.steps == 1 and result.stats.accepted_tokens == 3


def test_a_backend_without_trees_falls_back_to_plain_decoding():
    from tests.helpers import FakeBackend

    table = [(t * 7 + 3) % 128 for t in range(128)]
    calls = []
    drafter = ScriptedDrafter(lambda h, b: calls.append(b) or DraftTree.chain([1, 2]))
    backend = FakeBackend(table, eog=())
    backend.supports_trees = False
    result = generate(Engine(backend, {"scripted": drafter}), [65],
                      GenerationSettings(max_tokens=10, drafter="scripted"))
    assert calls == [] and result.stats.steps == 10 and result.stats.draft_tokens == 0
    expected, token = [], 65
    for _ in range(10):
        token = table[token]
        expected.append(token)
    assert result.tokens == expected
