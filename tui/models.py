"""The model picker's data: GGUF files in the configured folders and the memory each would need."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from localspec.errors import LocalspecError, ModelFileError
from localspec.modelfile import read_model_file

CONFIG_NAME = "chat.toml"
KV_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
            "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}


class ChatConfigError(LocalspecError):
    """chat.toml cannot be read or written; it is left as it is."""


def _read_config(path: Path) -> dict:
    """chat.toml's contents ({} where there is none); a file that is not valid is a ChatConfigError."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ChatConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ChatConfigError(f"{path} is not valid TOML ({exc}): fix or remove it") from None
    if not isinstance(data.get("model_dirs", []), list):
        raise ChatConfigError(f"{path}: model_dirs must be a list of folders, "
                              f'like model_dirs = ["~/models"]: fix or remove it')
    return data


def model_folders(config_dir: Path) -> list[Path]:
    """Folders listed as `model_dirs = [...]` in chat.toml; a broken file counts as none."""
    try:
        data = _read_config(config_dir / CONFIG_NAME)
    except ChatConfigError:
        return []
    return [Path(p).expanduser() for p in data.get("model_dirs", []) if isinstance(p, str)]


def add_model_folder(config_dir: Path, folder: Path) -> list[Path]:
    """Add a folder to chat.toml, keeping its other content; ChatConfigError if it cannot be."""
    path = config_dir / CONFIG_NAME
    data = _read_config(path)
    folders = [str(p) for p in data.get("model_dirs", []) if isinstance(p, str)]
    if str(folder) not in folders:
        folders.append(str(folder))
    data["model_dirs"] = folders
    try:
        config_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(data), encoding="utf-8")
    except OSError as exc:
        raise ChatConfigError(f"cannot write {path}: {exc}") from None
    return [Path(p).expanduser() for p in folders]


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    name: str
    file_size: int
    planned_bytes: int | None  # weights + KV cache at the context size; None if unreadable
    note: str = ""


def planned_memory(path: Path, n_ctx: int, kv_type: str = "f16") -> int:
    """Predicted peak memory from the GGUF alone: the memory model's estimate (weights, KV cache,
    logits, scratch, drafter state), or weights plus KV cache where that cannot be computed."""
    try:
        from localspec.memory import ModelMemory, ScratchModel, estimate
        from localspec.settings import BackendSettings

        model = ModelMemory.from_gguf(path)
        settings = BackendSettings(n_ctx=n_ctx, kv_type=kv_type, n_threads=1)
        return estimate(model, settings, 64, "auto", ScratchModel.analytic(model)).total
    except ModelFileError:
        raise
    except Exception:  # an architecture the memory model does not know: the plain estimate below
        pass
    info = read_model_file(path)
    n_ctx = n_ctx or info.context_length
    kv = info.n_layer * info.n_head_kv * info.head_dim * 2 * KV_BYTES.get(kv_type, 2) * n_ctx
    return int(info.file_size + kv)


def find_models(folders: list[Path], n_ctx: int, kv_type: str = "f16") -> list[ModelEntry]:
    """Every *.gguf directly inside the folders (or the files themselves), deduplicated, by name."""
    seen: dict[Path, ModelEntry] = {}
    for folder in folders:
        if folder.is_file():
            candidates = [folder]
        else:
            candidates = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
        for path in candidates:
            path = path.resolve()
            if path in seen:
                continue
            try:
                seen[path] = ModelEntry(path, path.name, path.stat().st_size,
                                        planned_memory(path, n_ctx, kv_type))
            except (ModelFileError, OSError) as exc:
                seen[path] = ModelEntry(path, path.name, 0, None, str(exc))
    return sorted(seen.values(), key=lambda e: e.name.lower())
