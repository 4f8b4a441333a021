"""Where localspec keeps files for a user: cache, config (profiles) and data (chat history).

Each can be redirected with an environment variable, which is how tests stay out of the
user's own folders.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import platformdirs

from localspec.errors import LocalspecError


class UserDirError(LocalspecError):
    """A cache, config or data folder is a file, or cannot be created."""


def _dir(env: str, default: str) -> Path:
    override = os.environ.get(env)
    path = Path(override) if override else Path(default)
    where, fix = (f"{env}={path}", "") if override else (str(path), "move the file or ")
    # the folders are made on first write, deep in the code: a file in the way is caught here
    try:
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
    except OSError as exc:
        raise UserDirError(f"{where} cannot be used: {exc.strerror or exc}") from None
    if existing is not None and not existing.is_dir():
        what = "is a file" if existing == path else f"is inside a file ({existing})"
        raise UserDirError(f"{where} {what}, not a folder; {fix}set {env} to a folder")
    return path


def make_dir(path: Path) -> Path:
    """Create a folder (and its parents) if missing; a failure is one clear error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserDirError(f"cannot create the folder {path}: {exc.strerror or exc}") from None
    return path


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it, so that a reader (another
    process, too) never sees half a file; a folder that cannot be made or written is one error."""
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UserDirError(f"cannot write {path}: {exc.strerror or exc}") from None


def cache_dir() -> Path:
    """Measured cost curves, recycling matrices: safe to delete."""
    return _dir("LOCALSPEC_CACHE_DIR", platformdirs.user_cache_dir("localspec"))


def config_dir() -> Path:
    """Tuned memory profiles and settings."""
    return _dir("LOCALSPEC_CONFIG_DIR", platformdirs.user_config_dir("localspec"))


def data_dir() -> Path:
    """Conversation history."""
    return _dir("LOCALSPEC_DATA_DIR", platformdirs.user_data_dir("localspec"))
