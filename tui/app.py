"""The chat app: routes prompts to the model worker, answers to the view, and everything to history.

The model runs only in thread workers (loading and generating, never both at once); the UI thread
talks to it through messages, so the window stays responsive while tokens stream.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import var
from textual.widgets import Button, Footer, Label
from textual.worker import get_current_worker

from localspec.chat import Message as ChatMessage
from localspec.errors import LocalspecError
from localspec.paths import config_dir, data_dir
from localspec.settings import GenerationSettings
from tui.chatmodel import ChatModel, LiveStats, ModelLoader, Progress, load_llamacpp
from tui.commands import ChatCommands
from tui.export import slug, to_markdown
from tui.history import Conversation, History, HistoryError, StoredMessage
from tui.options import ChatSettings
from tui.screens.dialogs import ConfirmScreen, TextPromptScreen
from tui.screens.help import HelpScreen
from tui.screens.models import ModelPickerScreen
from tui.screens.settings import SettingsScreen
from tui.status import MemoryUse, process_memory
from tui.widgets.details import DetailsPanel
from tui.widgets.messages import ChatLog, MessageView
from tui.widgets.prompt import PromptInput
from tui.widgets.sidebar import ConversationList
from tui.widgets.statusbar import StatusBar

PROMPT_KEYS = [("enter", "Send the prompt"), ("shift+enter, ctrl+j", "New line in the prompt"),
               ("up, down", "Earlier prompts of this conversation (from the first / last line)"),
               ("r, delete", "Rename or delete the conversation selected in the sidebar"),
               ("ctrl+p", "Command palette: every action, and themes"), ("ctrl+q", "Quit")]


@dataclass(frozen=True)
class ChatOptions:
    model: Path
    history_path: Path | None = None  # default: chat.sqlite3 in the user data folder
    config_dir: Path | None = None  # where chat.toml lists model folders
    n_ctx: int = 4096  # for the model picker's memory estimate
    kv_type: str = "f16"


@dataclass
class Turn:
    """The answer being generated and what to undo if it fails."""

    conversation_id: int
    prompt: str | None = None  # the prompt this turn sent; restored to the input on an engine error
    user_view: MessageView | None = None
    user_message_id: int | None = None
    view: MessageView | None = None  # the answer, once mounted
    replaces: StoredMessage | None = None  # the answer being regenerated: deleted once the new one is stored


class ChatApp(App[None]):
    CSS_PATH = "chat.tcss"
    TITLE = "localspec chat"
    COMMANDS = App.COMMANDS | {ChatCommands}
    BINDINGS = [
        Binding("escape", "cancel", "Stop", tooltip="Stop the answer, keeping what was written"),
        Binding("ctrl+n", "new_conversation", "New", tooltip="Start a new conversation"),
        Binding("ctrl+r", "regenerate", "Regenerate", tooltip="Answer the last prompt again"),
        Binding("ctrl+l", "edit_last", "Edit last", show=False,
                tooltip="Take back the last prompt and its answer, to edit and resend"),
        Binding("ctrl+s", "settings", "Settings", tooltip="System prompt and sampling, per conversation"),
        Binding("ctrl+o", "pick_model", "Model", tooltip="Choose a model, with the memory it needs"),
        Binding("ctrl+b", "toggle_sidebar", "Sidebar", show=False, tooltip="Show or hide the conversations"),
        Binding("ctrl+g", "toggle_details", "Details",
                tooltip="Speculation details: tokens per verify step"),
        Binding("ctrl+t", "export", "Export", show=False, tooltip="Export the conversation to Markdown"),
        Binding("f1", "help", "Help", tooltip="This list of keys"),
    ]

    generating: var[bool] = var(False, bindings=True)

    @dataclass
    class ModelLoaded(Message):
        model: ChatModel

    @dataclass
    class ModelFailed(Message):
        error: str

    @dataclass
    class ReplyProgress(Message):
        progress: Progress

    @dataclass
    class ReplyDone(Message):
        text: str
        stats: LiveStats | None
        finish_reason: str  # "stop", "length", "context" or "cancelled"
        dropped_messages: int = 0

    @dataclass
    class ReplyFailed(Message):
        error: str

    def __init__(self, options: ChatOptions, load_model: ModelLoader = load_llamacpp,
                 memory: Callable[[], MemoryUse] | None = None) -> None:
        super().__init__()
        self.options = options
        self._load_model = load_model
        self._memory = memory or (lambda: process_memory(self.model.memory_budget if self.model else None))
        self._config_dir = options.config_dir or config_dir()
        self.history = History(options.history_path or data_dir() / "chat.sqlite3")
        self.model: ChatModel | None = None
        self.conversation: Conversation | None = None
        self.chat_settings = ChatSettings()
        self.turn: Turn | None = None

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Label("localspec", id="brand")
                yield Label(self.options.model.name, id="model-name", markup=False)
                yield Button("+ New chat", id="new-chat")
                yield ConversationList(id="conversations")
            with Vertical(id="main"):
                yield ChatLog(id="log")
                yield DetailsPanel(id="details")
                yield PromptInput(id="prompt", placeholder="Message the model (Enter sends)")
        yield StatusBar(id="status")
        yield Footer()

    @property
    def log_view(self) -> ChatLog:
        return self.query_one(ChatLog)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    @property
    def sidebar(self) -> ConversationList:
        return self.query_one(ConversationList)

    def set_status(self, **changes) -> None:
        bar = self.query_one(StatusBar)
        bar.info = replace(bar.info, **changes)

    async def on_mount(self) -> None:
        theme = self.history.get_state("theme")
        if theme in self.available_themes:
            self.theme = theme
        self.watch(self, "theme", lambda name: self.save_state("theme", name), init=False)
        self.set_status(state="loading model")
        self.prompt.loading = True
        self.prompt.focus()
        last = self.history.get_state("last_conversation")
        conversation = self.history.conversation(int(last)) if last and last.isdigit() else None
        await self.open_conversation(conversation)
        self.refresh_memory()
        self.set_interval(2.0, self.refresh_memory)
        self.load(self.options.model, None)

    def save_state(self, key: str, value: str) -> None:
        try:
            self.history.set_state(key, value)
        except HistoryError as exc:
            self.history_failed(exc)

    def history_failed(self, exc: HistoryError) -> None:
        self.notify(f"{exc}\nThis change is not saved.", title="History not saved", severity="warning",
                    timeout=10, markup=False)

    def refresh_memory(self) -> None:
        if self.query(StatusBar):  # the interval can fire once more while the app tears down
            self.set_status(memory=self._memory())

    async def on_unmount(self) -> None:
        self.workers.cancel_group(self, "generate")
        if self.model is not None:
            self.model.close()  # waits for the step in flight
            self.model = None
        self.history.close()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.generating
        return True

    # -- the model -----------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="model")
    def load(self, path: Path, previous: ChatModel | None) -> None:
        if previous is not None:
            previous.close()
        try:
            model = self._load_model(path)
        except Exception as exc:  # any loader failure is reported, the app keeps running
            self.post_message(self.ModelFailed(str(exc)))
            return
        self.post_message(self.ModelLoaded(model))

    @on(ModelLoaded)
    def model_loaded(self, event: ModelLoaded) -> None:
        self.model = event.model
        self.prompt.loading = False
        self.prompt.focus()
        self.query_one("#model-name", Label).update(event.model.name)
        self.set_status(state="ready", n_ctx=event.model.n_ctx,
                        context_used=event.model.context_used)

    @on(ModelFailed)
    def model_failed(self, event: ModelFailed) -> None:
        self.prompt.loading = False
        self.set_status(state="no model")
        self.notify(f"{event.error}\nChoose another model with Ctrl+O.", title="Cannot load the model",
                    severity="error", timeout=15, markup=False)

    def action_pick_model(self) -> None:
        if self.generating:
            self.notify("Stop the answer first (Esc).", severity="warning")
            return
        current = self.model.path if self.model else self.options.model
        screen = ModelPickerScreen(self._config_dir, current, self.options.n_ctx, self.options.kv_type)
        self.push_screen(screen, self.switch_model)

    def switch_model(self, path: Path | None) -> None:
        if path is None or (self.model is not None and path == self.model.path.resolve()):
            return
        previous, self.model = self.model, None
        self.prompt.loading = True
        self.query_one("#model-name", Label).update(path.name)
        self.set_status(state="loading model", stats=None, n_ctx=0, context_used=0)
        self.load(path, previous)

    # -- conversations -------------------------------------------------------------------------

    async def open_conversation(self, conversation: Conversation | None) -> None:
        """Show a stored conversation, or an empty new one (None) with the current settings."""
        self.conversation = conversation
        if conversation is not None:
            self.chat_settings = ChatSettings.from_dict(conversation.settings)
            self.save_state("last_conversation", str(conversation.id))
        stored = self.history.messages(conversation.id) if conversation else []
        await self.log_view.show([(m.role, m.content, m.id) for m in stored])
        self.prompt.remember([m.content for m in stored if m.role == "user"])
        answers = [m for m in stored if m.role == "assistant" and m.stats]
        stats = LiveStats.from_dict(answers[-1].stats) if answers else LiveStats()
        self.query_one(DetailsPanel).stats = stats
        self.set_status(stats=stats if stats.steps else None)
        self.refresh_sidebar()

    def refresh_sidebar(self) -> None:
        self.sidebar.show(self.history.conversations(), self.conversation.id if self.conversation else None)

    def _busy(self) -> bool:
        if self.generating:
            self.notify("Wait for the answer or stop it with Esc.", severity="warning")
        return self.generating

    @on(Button.Pressed, "#new-chat")
    async def action_new_conversation(self) -> None:
        if not self._busy():
            await self.open_conversation(None)
            self.prompt.focus()

    @on(ConversationList.OptionSelected)
    async def conversation_selected(self, event: ConversationList.OptionSelected) -> None:
        chosen = int(event.option.id) if event.option.id else None
        if chosen is None or (self.conversation and chosen == self.conversation.id) or self._busy():
            return
        await self.open_conversation(self.history.conversation(chosen))
        self.prompt.focus()

    @on(ConversationList.Rename)
    def rename_requested(self, event: ConversationList.Rename) -> None:
        self.rename(event.conversation_id)

    def action_rename_current(self) -> None:
        if self.conversation is not None:
            self.rename(self.conversation.id)

    def rename(self, conversation_id: int) -> None:
        conversation = self.history.conversation(conversation_id)
        if conversation is None:
            return

        def done(title: str | None) -> None:
            if not title:
                return
            try:
                self.history.rename(conversation_id, title)
            except HistoryError as exc:
                self.history_failed(exc)
                return
            if self.conversation and self.conversation.id == conversation_id:
                self.conversation = self.history.conversation(conversation_id)
            self.refresh_sidebar()

        self.push_screen(TextPromptScreen("Rename conversation", conversation.title, "Rename"), done)

    @on(ConversationList.Delete)
    def delete_requested(self, event: ConversationList.Delete) -> None:
        self.delete(event.conversation_id)

    def action_delete_current(self) -> None:
        if self.conversation is not None:
            self.delete(self.conversation.id)

    def delete(self, conversation_id: int) -> None:
        conversation = self.history.conversation(conversation_id)
        if conversation is None or self._busy():
            return

        async def done(confirmed: bool | None) -> None:
            if not confirmed:
                return
            try:
                self.history.delete(conversation_id)
            except HistoryError as exc:
                self.history_failed(exc)
                return
            if self.conversation and self.conversation.id == conversation_id:
                remaining = self.history.conversations()
                await self.open_conversation(remaining[0] if remaining else None)
            else:
                self.refresh_sidebar()

        self.push_screen(ConfirmScreen(f"Delete “{conversation.title}”?"), done)

    def action_export(self) -> None:
        if self.conversation is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        self.ask_export_name(self.conversation, f"{slug(self.conversation.title)}.md")

    def ask_export_name(self, conversation: Conversation, name: str) -> None:
        def done(name: str | None) -> None:
            if not name:
                return
            text = to_markdown(conversation, self.history.messages(conversation.id),
                               self.chat_settings.system_prompt)
            try:
                path = Path(name).expanduser()  # RuntimeError: ~user of no such user
                with path.open("x", encoding="utf-8", errors="replace") as file:  # never overwrites
                    file.write(text)
            except FileExistsError:
                self.notify(f"{path} already exists: choose another name.", title="Not exported",
                            severity="warning", markup=False)
                self.ask_export_name(conversation, name)
                return
            except (OSError, RuntimeError, ValueError) as exc:  # ~nosuchuser, a NUL in the name
                message = str(exc) if isinstance(exc, OSError) else f"{name}: {exc}"
                self.notify(message, title="Export failed", severity="error", markup=False)
                return
            self.notify(f"Saved {path.resolve()}", title="Exported", markup=False)

        self.push_screen(TextPromptScreen("Export to Markdown file", name, "Export"), done)

    # -- settings and panels -------------------------------------------------------------------

    def action_settings(self) -> None:
        def done(settings: ChatSettings | None) -> None:
            if settings is None:
                return
            self.chat_settings = settings
            if self.conversation is not None:
                try:
                    self.history.save_settings(self.conversation.id, settings.to_dict())
                except HistoryError as exc:
                    self.history_failed(exc)
                    return
            self.notify("Settings saved for this conversation", timeout=2)

        self.push_screen(SettingsScreen(self.chat_settings), done)

    def action_toggle_sidebar(self) -> None:
        self.query_one("#sidebar").toggle_class("hidden")

    def action_toggle_details(self) -> None:
        self.query_one(DetailsPanel).toggle_class("visible")

    def action_help(self) -> None:
        keys = [(b.key, b.tooltip or b.description) for b in self.BINDINGS if isinstance(b, Binding)]
        self.push_screen(HelpScreen(PROMPT_KEYS[:3] + keys + PROMPT_KEYS[3:]))

    def action_copy_code(self) -> None:
        code = self.log_view.last_code_block()
        if code is None:
            self.notify("No code block in this conversation.", severity="warning")
            return
        self.copy_to_clipboard(code)
        self.notify("Code copied to the clipboard", timeout=2)

    # -- sending and answering -----------------------------------------------------------------

    @on(PromptInput.Submitted)
    async def send(self, event: PromptInput.Submitted) -> None:
        if self.model is None:
            self.notify("The model is not loaded yet.", severity="warning")
            return
        if self._busy():
            return
        text = event.text
        conversation = self.conversation
        try:
            if conversation is None:
                title = text.strip().splitlines()[0][:48]
                conversation = self.history.create(title, self.chat_settings.to_dict())
            stored = self.history.add_message(conversation.id, "user", text)
        except HistoryError as exc:  # the prompt stays in the input, to send again
            self.notify(f"{exc}\nThe prompt was not sent.", title="History not saved", severity="error",
                        timeout=10, markup=False)
            return
        if self.conversation is None:
            self.conversation = conversation
            self.save_state("last_conversation", str(conversation.id))
        self.prompt.clear_sent(text)
        user_view = await self.log_view.add("user", stored.content, stored.id)
        self.refresh_sidebar()
        await self.start_reply(Turn(self.conversation.id, text, user_view, stored.id))

    async def start_reply(self, turn: Turn) -> None:
        assert self.model is not None
        turn.view = await self.log_view.add("assistant")
        turn.view.start_stream()
        self.log_view.anchor()
        self.turn = turn
        self.generating = True
        self.set_status(state="generating")
        system = self.chat_settings.system_prompt.strip()
        replaced = turn.replaces.id if turn.replaces else None
        messages = ([ChatMessage("system", system)] if system else []) + [
            ChatMessage(m.role, m.content) for m in self.history.messages(turn.conversation_id)
            if m.id != replaced]
        self.generate(self.model, messages, self.chat_settings.generation())

    @work(thread=True, exclusive=True, group="generate")
    def generate(self, model: ChatModel, messages: list[ChatMessage], settings: GenerationSettings) -> None:
        worker = get_current_worker()
        parts: list[str] = []
        last: Progress | None = None
        try:
            with closing(model.reply(messages, settings)) as stream:
                for progress in stream:
                    parts.append(progress.text)
                    last = progress
                    self.post_message(self.ReplyProgress(progress))
                    if worker.is_cancelled:
                        break
        except Exception as exc:  # engine errors and bugs alike must not kill the app
            message = str(exc) if isinstance(exc, LocalspecError) else f"{type(exc).__name__}: {exc}"
            self.post_message(self.ReplyFailed(message))
            return
        finish = last.finish_reason if last is not None and last.finish_reason else "cancelled"
        self.post_message(self.ReplyDone("".join(parts), last.stats if last else None, finish,
                                         last.dropped_messages if last else 0))

    def action_cancel(self) -> None:
        if self.generating:
            self.workers.cancel_group(self, "generate")
            self.set_status(state="stopping")

    @on(ReplyProgress)
    async def reply_progress(self, event: ReplyProgress) -> None:
        if self.turn is None or self.turn.view is None:
            return
        progress = event.progress
        await self.turn.view.write(progress.text)
        self.set_status(stats=progress.stats, context_used=progress.context_used)
        self.query_one(DetailsPanel).stats = progress.stats

    @on(ReplyDone)
    async def reply_done(self, event: ReplyDone) -> None:
        turn, self.turn = self.turn, None
        self.generating = False
        if turn is None or turn.view is None:
            return
        await turn.view.finish(event.text)
        if event.text:
            stats = event.stats.to_dict() if event.stats else None
            try:
                stored = self.history.add_message(turn.conversation_id, "assistant", event.text, stats)
                turn.view.message_id = stored.id
                if turn.replaces is not None:
                    self.history.delete_message(turn.replaces.id)
            except HistoryError as exc:
                self.history_failed(exc)
        else:
            await self.log_view.remove_view(turn.view)
            await self.restore_replaced(turn)
        states = {"stop": "ready", "length": "ready (max tokens reached)", "cancelled": "stopped",
                  "context": "context full"}
        self.set_status(state=states.get(event.finish_reason, "ready"),
                        context_used=self.model.context_used if self.model else 0)
        if event.dropped_messages:
            self.notify(f"The conversation is longer than the context: the model no longer sees its "
                        f"{event.dropped_messages} oldest messages (they stay in the history).",
                        title="Context shifted", severity="information", timeout=8)
        if event.finish_reason == "context":
            self.notify("The context window is full: start a new conversation, or restart with a "
                        "larger --ctx.", title="Context full", severity="warning", timeout=10)
        self.refresh_sidebar()

    @on(ReplyFailed)
    async def reply_failed(self, event: ReplyFailed) -> None:
        turn, self.turn = self.turn, None
        self.generating = False
        self.set_status(state="ready" if self.model else "no model")
        self.notify(event.error, title="Generation failed", severity="error", timeout=10, markup=False)
        if turn is None:
            return
        if turn.view is not None:
            await self.log_view.remove_view(turn.view)
        await self.restore_replaced(turn)
        if turn.prompt is None or turn.user_message_id is None:
            return
        # The prompt was never answered: take it back out of the history and give it back to edit.
        try:
            self.history.delete_message(turn.user_message_id)
            if self.conversation and not self.history.messages(self.conversation.id):
                self.history.delete(self.conversation.id)
                self.conversation = None
        except HistoryError as exc:  # the prompt stays in the conversation, and regenerate can answer it
            self.history_failed(exc)
            return
        if turn.user_view is not None:
            await self.log_view.remove_view(turn.user_view)
        self.prompt.restore(turn.prompt)
        self.refresh_sidebar()

    async def restore_replaced(self, turn: Turn) -> None:
        """A regenerated answer that failed or came out empty: show the previous one again."""
        if turn.replaces is not None:
            await self.log_view.add("assistant", turn.replaces.content, turn.replaces.id)

    def _last_messages(self):
        return self.history.messages(self.conversation.id) if self.conversation else []

    async def action_regenerate(self) -> None:
        if self.model is None or self._busy():
            return
        stored = self._last_messages()
        if not stored:
            self.notify("Nothing to regenerate yet.", severity="warning")
            return
        replaces = stored[-1] if stored[-1].role == "assistant" else None
        if replaces is not None:
            views = self.log_view.views
            if views and views[-1].message_id == replaces.id:
                await self.log_view.remove_view(views[-1])
        assert self.conversation is not None
        await self.start_reply(Turn(self.conversation.id, replaces=replaces))

    async def action_edit_last(self) -> None:
        if self._busy():
            return
        stored = self._last_messages()
        users = [i for i, m in enumerate(stored) if m.role == "user"]
        if not users:
            self.notify("No prompt to edit yet.", severity="warning")
            return
        removed = stored[users[-1]:]
        ids = {m.id for m in removed}
        try:
            for message in removed:
                self.history.delete_message(message.id)
        except HistoryError as exc:
            self.history_failed(exc)
            return
        for view in self.log_view.views:
            if view.message_id in ids:
                await self.log_view.remove_view(view)
        self.prompt.remember([m.content for m in stored[:users[-1]] if m.role == "user"])
        self.prompt.restore(removed[0].content)
