"""The app's plain-Python parts: settings, status text, export, model listing, model wrapper."""

from __future__ import annotations

import pytest

from localspec.chat import Message
from localspec.settings import BackendSettings
from tui.chatmodel import LiveStats, load_llamacpp
from tui.export import slug, to_markdown
from tui.history import Conversation, StoredMessage
from tui.models import ChatConfigError, add_model_folder, find_models, model_folders
from tui.options import ChatSettings
from tui.status import MemoryUse, StatusInfo, drafter_summary, human_bytes
from tui.widgets.prompt import has_visible_text


def test_chat_settings_round_trip_and_fall_back_on_bad_values():
    settings = ChatSettings(system_prompt="be brief", temperature=0.8, seed=3)
    assert ChatSettings.from_dict(settings.to_dict()) == settings
    assert ChatSettings.from_dict({"temperature": -1}) == ChatSettings()
    assert ChatSettings.from_dict({"future_option": 1, "top_k": 5}).top_k == 5
    assert ChatSettings.from_dict([1, 2]) == ChatSettings() == ChatSettings.from_dict(None)
    generation = settings.generation()
    assert generation.drafter == "auto" and generation.sampling.temperature == 0.8


def test_status_text_names_drafters_memory_and_context():
    stats = LiveStats(tokens=30, steps=12, tokens_per_s=123.4, mean_accepted=2.5,
                      by_source={"auto:recycling:0": 3, "auto:recycling:2": 1, "auto:retrieval:8": 9})
    info = StatusInfo(state="ready", stats=stats, memory=MemoryUse(300 << 20, 8 << 30, "budget"),
                      context_used=200, n_ctx=4096)
    assert info.text() == ("ready │ 123 tok/s │ 2.50 tok/step │ drafts: retrieval 9, recycling 4 │ "
                           "mem 300 MiB/8.0 GiB budget │ ctx 200/4096")
    assert StatusInfo(state="loading model").text() == "loading model"
    assert drafter_summary({}) == "none accepted"
    assert drafter_summary({"retrieval:4": 5, "lookup:1": 2}) == "retrieval 5, lookup 2"  # not "4 5"
    assert human_bytes(512) == "512 B" and human_bytes(3 << 30) == "3.0 GiB"


def test_live_stats_survive_storage():
    stats = LiveStats(tokens=5, steps=2, by_source={"lookup": 3}, step_tokens=(4, 1))
    assert LiveStats.from_dict(stats.to_dict()) == stats


def test_markdown_export():
    conversation = Conversation(1, "Lists in Python", 0.0, 0.0)
    messages = [StoredMessage(1, "user", "What is a list?"), StoredMessage(2, "assistant", "A sequence.\n")]
    text = to_markdown(conversation, messages, "Be brief.")
    assert text.startswith("# Lists in Python\n")
    assert "## System\n\nBe brief.\n\n## You\n\nWhat is a list?\n\n## Assistant\n\nA sequence.\n" in text
    assert slug("Lists in Python?!") == "lists-in-python" and slug("???") == "conversation"


def test_model_folders_and_listing(tmp_path, demo_model):
    config = tmp_path / "config"
    assert model_folders(config) == []
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "bad.gguf").write_bytes(b"nope")
    assert add_model_folder(config, folder) == [folder]
    assert add_model_folder(config, folder) == [folder]  # no duplicates
    entries = find_models([demo_model.parent, *model_folders(config), tmp_path / "missing"], n_ctx=2048)
    by_name = {e.name: e for e in entries}
    assert by_name["bad.gguf"].planned_bytes is None and "GGUF" in by_name["bad.gguf"].note
    demo = by_name[demo_model.name]
    assert demo.planned_bytes > demo.file_size
    larger = find_models([demo_model], n_ctx=8192)[0]
    assert larger.planned_bytes > demo.planned_bytes  # more context, more KV cache


@pytest.mark.parametrize("content", ["model_dirs = [[[", 'model_dirs = "notalist"'])
def test_a_broken_chat_toml_is_never_rewritten(tmp_path, content):
    config = tmp_path / "config"
    config.mkdir()
    (config / "chat.toml").write_text(content)
    assert model_folders(config) == []
    with pytest.raises(ChatConfigError, match="chat.toml"):
        add_model_folder(config, tmp_path)
    assert (config / "chat.toml").read_text() == content


def test_an_unwritable_chat_toml_is_a_clear_error(tmp_path):
    (tmp_path / "chat.toml").mkdir()
    with pytest.raises(ChatConfigError, match="chat.toml"):
        add_model_folder(tmp_path, tmp_path)


def test_a_prompt_of_only_invisible_characters_is_not_text():
    assert not has_visible_text(" \n\t\u00a0\u200b\ufeff\x0b")
    assert has_visible_text("\u200bhi") and has_visible_text("[/]")


def test_chat_model_reports_steps_and_kv_reuse(demo_model):
    model = load_llamacpp(demo_model, BackendSettings(n_ctx=512, n_threads=1))
    try:
        settings = ChatSettings(max_tokens=24).generation()
        first = list(model.reply([Message("user", "hello")], settings))
        last = first[-1]
        assert last.finish_reason in ("stop", "length")
        assert sum(last.stats.step_tokens) == last.stats.tokens
        assert len(last.stats.step_tokens) == last.stats.steps
        text = "".join(p.text for p in first)
        again = list(model.reply([Message("user", "hello"), Message("assistant", text),
                                  Message("user", "more")], settings))
        assert again[-1].stats.reused_tokens >= last.stats.prompt_tokens - 1
        assert model.context_used == again[-1].context_used
    finally:
        model.close()


def test_chat_model_keeps_the_recycling_matrix_between_runs(demo_model):
    from localspec.drafters.persist import learned_path

    settings = ChatSettings(max_tokens=16).generation()
    path = learned_path(demo_model, 8)
    model = load_llamacpp(demo_model, BackendSettings(n_ctx=512, n_threads=1))
    model.learn = True
    list(model.reply([Message("user", "hello")], settings))
    learnt = model.engine.drafter(settings.drafter).recycling.adj.copy()
    model.close()
    assert path.is_file()
    again = load_llamacpp(demo_model, BackendSettings(n_ctx=512, n_threads=1))
    again.learn = True
    try:
        list(again.reply([Message("user", "hi")], ChatSettings(max_tokens=1).generation()))
        restored = again.engine.drafter(settings.drafter).recycling.adj
        assert restored is not None and (restored == learnt).mean() > 0.9  # one step learnt since
    finally:
        again.close()


def test_a_conversation_longer_than_the_context_shifts_keeping_the_system_prompt(demo_model):
    model = load_llamacpp(demo_model, BackendSettings(n_ctx=256, n_threads=1))
    try:
        turns = [Message("system", "You are brief.")]
        for i in range(12):
            turns += [Message("user", f"question {i}: what does def do in Python?"),
                      Message("assistant", f"answer {i}: it defines a function with a name and arguments.")]
        turns.append(Message("user", "and class?"))
        kept, prompt, dropped = model.fit(turns, max_tokens=512)
        assert dropped > 0 and kept[0] == turns[0] and kept[-1] == turns[-1]
        assert kept[1].role == "user" and kept[1:] == turns[1 + dropped:]
        assert len(prompt) + 256 // 4 <= 256
        assert model.fit(turns[:3], max_tokens=16)[2] == 0  # what fits is left alone
        last = list(model.reply(turns, ChatSettings(max_tokens=8).generation()))[-1]
        assert last.dropped_messages == model.fit(turns, max_tokens=8)[2] > 0
        assert last.context_used <= 256
    finally:
        model.close()
