"""Pick a GGUF model from the configured folders, seeing the memory each would need."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, LoadingIndicator, OptionList
from textual.widgets.option_list import Option

from tui.models import CONFIG_NAME, ChatConfigError, ModelEntry, add_model_folder, find_models, model_folders
from tui.status import human_bytes


def describe(entry: ModelEntry, current: Path | None) -> str:
    mark = "● " if current is not None and entry.path == current.resolve() else "  "
    if entry.planned_bytes is None:
        return f"{mark}{entry.name}  (cannot be read: {entry.note})"
    return (f"{mark}{entry.name}  ·  file {human_bytes(entry.file_size)}  ·  "
            f"needs ~{human_bytes(entry.planned_bytes)}")


class ModelPickerScreen(ModalScreen[Path | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, config_dir: Path, current: Path | None, n_ctx: int, kv_type: str = "f16") -> None:
        super().__init__()
        self.config_dir, self.current, self.n_ctx, self.kv_type = config_dir, current, n_ctx, kv_type

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="models"):
            yield Label("Choose a model", classes="dialog-title")
            yield Label(f"Memory = weights + KV cache for {self.n_ctx} tokens of context.", classes="hint")
            yield LoadingIndicator()
            yield OptionList(id="model-list")
            yield Input(placeholder="Add a folder of GGUF files and press Enter", id="folder")
            yield Label(f"Folders are kept in {self.config_dir / CONFIG_NAME}", classes="hint", markup=False)

    def folders(self) -> list[Path]:
        extra = [self.current.parent] if self.current is not None else []
        return extra + model_folders(self.config_dir)

    def on_mount(self) -> None:
        self.scan(self.folders())

    @work(thread=True, exclusive=True)
    def scan(self, folders: list[Path]) -> None:
        entries = find_models(folders, self.n_ctx, self.kv_type)
        self.app.call_from_thread(self.show, entries)

    def show(self, entries: list[ModelEntry]) -> None:
        self.query_one(LoadingIndicator).display = False
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(Text(describe(e, self.current)), id=str(e.path),
                                    disabled=e.planned_bytes is None) for e in entries])
        if not entries:
            options.add_option(Option("No GGUF files found in these folders.", disabled=True))
        options.focus()

    @on(Input.Submitted, "#folder")
    def add_folder(self, event: Input.Submitted) -> None:
        folder = Path(event.value.strip()).expanduser()
        if not folder.is_dir():
            self.notify(f"Not a folder: {folder}", severity="warning", markup=False)
            return
        try:
            add_model_folder(self.config_dir, folder)
        except ChatConfigError as exc:
            self.notify(str(exc), title="Folder not added", severity="error", timeout=15, markup=False)
            return
        event.input.clear()
        self.query_one(LoadingIndicator).display = True
        self.scan(self.folders())

    @on(OptionList.OptionSelected)
    def choose(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss(Path(event.option.id))

    def action_cancel(self) -> None:
        self.dismiss(None)
