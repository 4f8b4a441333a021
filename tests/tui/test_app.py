"""The chat app driven like a user would, on the real engine and the demo model."""

from __future__ import annotations

import sqlite3
import threading
from functools import partial

from textual.command import CommandList, CommandPalette
from textual.widgets import Input, Label, TextArea

from localspec.errors import BackendError
from tests.tui.conftest import (
    SETTINGS,
    FailingBackend,
    GatedBackend,
    answered,
    async_test,
    first_turn,
    ready,
    send,
    until,
    wrapped_loader,
)
from tui.chatmodel import load_llamacpp
from tui.history import History
from tui.options import ChatSettings
from tui.screens.dialogs import TextPromptScreen
from tui.screens.settings import SettingsScreen
from tui.widgets.statusbar import StatusBar

SIZE = (110, 34)


def stored(app):
    return [(m.role, m.content) for m in app.history.messages(app.conversation.id)]


@async_test
async def test_type_and_send_streams_the_answer(make_app):
    loader = wrapped_loader(lambda backend: GatedBackend(backend, free_steps=4))
    app = make_app(loader)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press(*"Write a python function")
        await pilot.press("enter")
        assert app.prompt.text == ""
        gated = loader.made[0]
        # the answer is on screen while the model is still generating
        await until(pilot, lambda: len(app.log_view.views) == 2 and app.log_view.views[-1].content)
        partial_text = app.log_view.views[-1].content
        assert app.generating
        assert app.query_one(StatusBar).info.state == "generating"
        gated.gate.set()
        await answered(app, pilot)
        answer = app.log_view.views[-1].content
        assert answer.startswith(partial_text) and len(answer) > len(partial_text)
        assert stored(app) == [("user", "Write a python function"), ("assistant", answer)]
        info = app.query_one(StatusBar).info
        assert info.state == "ready" and info.stats.tokens > 0 and info.stats.steps > 0
        assert info.context_used > info.stats.tokens and info.n_ctx == SETTINGS.n_ctx


@async_test
async def test_escape_stops_at_once_and_keeps_the_text(make_app):
    loader = wrapped_loader(lambda backend: GatedBackend(backend, free_steps=3))
    app = make_app(loader)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await send(app, pilot, "Write a python class")
        await until(pilot, lambda: app.log_view.views[-1].content)
        gated = loader.made[0]
        await pilot.press("escape")
        gated.gate.set()  # the step in flight finishes; no further step starts
        await answered(app, pilot)
        calls_at_stop = gated.calls
        kept = app.log_view.views[-1].content
        assert kept
        assert stored(app) == [("user", "Write a python class"), ("assistant", kept)]
        assert app.query_one(StatusBar).info.state == "stopped"
        assert calls_at_stop <= gated.free_steps + 1
        assert calls_at_stop == gated.calls


@async_test
async def test_engine_error_restores_the_prompt(make_app):
    app = make_app(wrapped_loader(lambda backend: FailingBackend(backend, 0)))
    async with app.run_test(size=SIZE) as pilot:
        await first_turn(app, pilot, "hello there")
        assert app.prompt.text == "hello there"
        assert app.log_view.views == []
        assert app.conversation is None and app.history.conversations() == []
        assert any("out of memory" in n.message for n in app._notifications)
        assert app.query_one(StatusBar).info.state == "ready"


@async_test
async def test_window_paints_before_the_model_loads(make_app):
    release = threading.Event()

    def slow_loader(path):
        release.wait(timeout=30)
        return load_llamacpp(path, SETTINGS)

    app = make_app(slow_loader)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.prompt.loading and app.query_one(StatusBar).info.state == "loading model"
        assert app.query_one("#welcome").display
        release.set()
        await ready(app, pilot)
        assert not app.prompt.loading and app.query_one(StatusBar).info.state == "ready"


@async_test
async def test_conversation_survives_a_restart_and_reuses_the_kv_prefix(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await first_turn(app, pilot, "What is a list?")
        first = stored(app)
        conversation_id = app.conversation.id

    again = make_app()
    async with again.run_test(size=SIZE) as pilot:
        await ready(again, pilot)
        assert again.conversation.id == conversation_id
        assert [(v.role, v.content) for v in again.log_view.views] == first
        await pilot.press("up")  # recalls the earlier prompt
        assert again.prompt.text == "What is a list?"
        await send(again, pilot, "And a dict?")
        await answered(again, pilot)
        await send(again, pilot, "And a set?")
        await answered(again, pilot)
        assert len(stored(again)) == 6
        stats = again.history.messages(conversation_id)[-1].stats
        # the third turn re-prefilled only what was new since the second
        assert stats["reused_tokens"] > stats["prompt_tokens"] // 2


@async_test
async def test_switching_conversations(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await first_turn(app, pilot, "first conversation")
        first_id = app.conversation.id
        await pilot.press("ctrl+n")
        assert app.log_view.views == [] and app.conversation is None
        await send(app, pilot, "second conversation")
        await answered(app, pilot)
        assert app.conversation.id != first_id
        assert [o.id for o in app.sidebar.options] == [str(app.conversation.id), str(first_id)]

        app.sidebar.focus()
        app.sidebar.highlighted = 1
        await pilot.press("enter")
        await pilot.pause()
        assert app.conversation.id == first_id
        assert app.log_view.views[0].content == "first conversation"

    reopened = make_app()
    async with reopened.run_test(size=SIZE) as pilot:
        assert reopened.conversation.id == first_id  # the last one open, not the last one written


@async_test
async def test_regenerate_and_edit_last_prompt(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await first_turn(app, pilot, "Write a loop")
        answer = stored(app)[-1]
        await pilot.press("ctrl+r")
        await answered(app, pilot)
        assert stored(app) == [("user", "Write a loop"), answer]  # greedy: the same answer again
        assert len(app.log_view.views) == 2

        await pilot.press("ctrl+l")
        await pilot.pause()
        assert stored(app) == [] and app.log_view.views == []
        assert app.prompt.text == "Write a loop"
        await pilot.press(*" twice", "enter")
        await answered(app, pilot)
        assert stored(app)[0] == ("user", "Write a loop twice")


@async_test
async def test_settings_are_validated_and_saved_per_conversation(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await first_turn(app, pilot, "hi")
        await pilot.press("ctrl+s")
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        screen.query_one("#temperature", Input).value = "500"
        await pilot.press("ctrl+s")
        assert app.screen is screen and "temperature" in str(screen.query_one("#error").render())
        screen.query_one("#temperature", Input).value = "0.7"
        screen.query_one("#system_prompt", TextArea).text = "You are terse."
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is not screen
        saved = app.history.conversation(app.conversation.id).settings
        assert saved["temperature"] == 0.7 and saved["system_prompt"] == "You are terse."
        assert app.chat_settings.generation().sampling.temperature == 0.7


async def open_export(app, pilot) -> None:
    """A conversation of one answered turn, and the export dialog open on it."""
    await first_turn(app, pilot, "Export me")
    await pilot.press("ctrl+t")
    await pilot.pause()


@async_test
async def test_export_to_markdown(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await open_export(app, pilot)
        target = tmp_path / "out.md"
        app.screen.query_one(Input).value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        text = target.read_text()
        assert text.startswith("# Export me") and "## You\n\nExport me" in text
        assert stored(app)[1][1].strip() in text


@async_test
async def test_rename_and_delete_from_the_sidebar(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await first_turn(app, pilot, "to be renamed")
        app.sidebar.focus()
        app.sidebar.highlighted = 0
        await pilot.press("r")
        await pilot.pause()
        app.screen.query_one(Input).value = "Renamed"
        await pilot.press("enter")
        await pilot.pause()
        assert app.history.conversations()[0].title == "Renamed"
        assert str(app.sidebar.get_option_at_index(0).prompt) == "Renamed"
        app.sidebar.focus()
        await pilot.press("delete")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert app.history.conversations() == [] and app.conversation is None
        assert app.log_view.views == []


@async_test
async def test_model_picker_lists_models_with_planned_memory(make_app, demo_model, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "broken.gguf").write_bytes(b"not a gguf")
    app = make_app(partial(load_llamacpp, settings=SETTINGS))
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        folder = app.screen.query_one("#folder", Input)
        folder.value = str(tmp_path / "models")
        folder.focus()
        await pilot.press("enter")
        options = app.screen.query_one("#model-list")
        await until(pilot, lambda: options.option_count == 2)
        texts = [str(options.get_option_at_index(i).prompt) for i in range(2)]
        assert "cannot be read" in texts[0]
        assert demo_model.name in texts[1] and "needs ~" in texts[1]
        await pilot.press("escape")
        assert History(tmp_path / "chat.sqlite3")  # still usable alongside the app


@async_test
async def test_command_palette_runs_chat_actions(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await first_turn(app, pilot, "palette")
        await pilot.press("ctrl+p")
        await pilot.press(*"export conv")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette)
                    and app.screen.query_one(CommandList).option_count > 0, steps=300)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TextPromptScreen), steps=300)
        assert app.screen.query_one(Input).value == "palette.md"


@async_test
async def test_the_memory_timer_firing_during_teardown_is_harmless(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await app.query_one(StatusBar).remove()  # as the app leaves, the bar goes first
        app.refresh_memory()  # the 2-second interval ticks once more


@async_test
async def test_the_memory_timer_firing_while_the_status_labels_go_is_harmless(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        bar = app.query_one(StatusBar)
        await bar.query_one("#state").remove()  # the bar's labels are removed before the bar
        app.refresh_memory()
        resources = bar.query_one("#resources", Label)
        assert str(resources.render()) == bar.info.resources()  # the labels left still update


def notes(app):
    return [(n.title, n.message) for n in app._notifications]


@async_test
async def test_titles_with_markup_are_shown_as_plain_text(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await first_turn(app, pilot, "close [/] tag")
        assert str(app.sidebar.get_option_at_index(0).prompt) == "close [/] tag"
        await app.run_action("rename_current")
        await pilot.pause()
        app.screen.query_one(Input).value = "[/x] weird [on red]hi"
        await pilot.press("enter")
        await pilot.pause()
        assert str(app.sidebar.get_option_at_index(0).prompt) == "[/x] weird [on red]hi"
        await app.run_action("delete_current")  # the confirmation names the title
        await pilot.pause()
        await pilot.press("escape")

    again = make_app()  # the stored title does not stop the next start
    async with again.run_test(size=SIZE) as pilot:
        await ready(again, pilot)
        assert again.conversation.title == "[/x] weird [on red]hi"


class FailsOnDemand(GatedBackend):
    fail = False

    def verify(self, root, tree):
        if self.fail:
            raise BackendError("llama_decode failed with status -3: out of memory")
        return super().verify(root, tree)


@async_test
async def test_a_failed_regenerate_keeps_the_previous_answer(make_app):
    loader = wrapped_loader(lambda backend: FailsOnDemand(backend, free_steps=10**9))
    app = make_app(loader)
    async with app.run_test(size=SIZE) as pilot:
        await first_turn(app, pilot, "Write a loop")
        before = stored(app)
        loader.made[0].fail = True
        await pilot.press("ctrl+r")
        await answered(app, pilot)
        assert stored(app) == before
        assert [(v.role, v.content) for v in app.log_view.views] == before
        assert ("Generation failed", "llama_decode failed with status -3: out of memory") in notes(app)
        loader.made[0].fail = False
        await pilot.press("ctrl+r")  # and the kept answer is replaced once a new one is stored
        await answered(app, pilot)
        assert stored(app) == before and len(app.log_view.views) == 2


@async_test
async def test_export_never_overwrites_and_reports_bad_names(make_app, tmp_path):
    existing = tmp_path / "notes.md"
    existing.write_text("precious")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await open_export(app, pilot)
        app.screen.query_one(Input).value = str(existing)
        await pilot.press("enter")
        await pilot.pause()
        assert existing.read_text() == "precious"
        assert notes(app)[-1] == ("Not exported", f"{existing} already exists: choose another name.")
        assert isinstance(app.screen, TextPromptScreen)  # asked again, to pick another name
        app.screen.query_one(Input).value = "~no_such_user_localspec/x.md"
        await pilot.press("enter")
        await pilot.pause()
        assert notes(app)[-1][0] == "Export failed" and "~no_such_user_localspec" in notes(app)[-1][1]


@async_test
async def test_damaged_json_in_the_history_reads_as_defaults(make_app, tmp_path):
    history = History(tmp_path / "chat.sqlite3")
    conversation = history.create("t", {"top_k": 4})
    history.add_message(conversation.id, "user", "hi")
    history.add_message(conversation.id, "assistant", "yo", {"tokens": 1})
    history.set_state("last_conversation", str(conversation.id))
    history.close()
    db = sqlite3.connect(tmp_path / "chat.sqlite3")
    db.execute("UPDATE conversations SET settings = '[1,2]'")
    db.execute("UPDATE messages SET stats = '{not json'")
    db.commit()
    db.close()
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert stored(app) == [("user", "hi"), ("assistant", "yo")]
        assert app.chat_settings == ChatSettings()


@async_test
async def test_a_read_only_history_keeps_the_app_running(make_app, tmp_path):
    path = tmp_path / "chat.sqlite3"
    history = History(path)
    conversation = history.create("t")
    history.add_message(conversation.id, "user", "hi")
    history.set_state("last_conversation", str(conversation.id))
    history.close()
    app = make_app()
    app.history._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # as on a read-only mount
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert stored(app) == [("user", "hi")]
        assert notes(app)[-1][0] == "History not saved" and "readonly" in notes(app)[-1][1]
        await send(app, pilot, "not saved")
        await pilot.pause()
        assert not app.generating and app.prompt.text == "not saved"  # kept, to send again
        assert "The prompt was not sent" in notes(app)[-1][1]
        assert [(v.role, v.content) for v in app.log_view.views] == [("user", "hi")]


@async_test
async def test_the_model_picker_reports_an_unwritable_chat_toml(make_app, tmp_path):
    (tmp_path / "config" / "chat.toml").mkdir(parents=True)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        folder = app.screen.query_one("#folder", Input)
        folder.value = str(tmp_path)
        folder.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert notes(app)[-1][0] == "Folder not added" and "chat.toml" in notes(app)[-1][1]
        assert folder.value == str(tmp_path)
