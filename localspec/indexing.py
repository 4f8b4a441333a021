"""Turning a user's files into a datastore: find text files, tokenise them, fingerprint the tokenizer.

The fingerprint ties an index to the tokenizer it was built with, so `--index` refuses an index
made for another model family instead of drafting nonsense.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localspec.datastore import Datastore, DatastoreError

MAX_FILE_BYTES = 4 << 20
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox",
             ".mypy_cache", ".pytest_cache", ".ruff_cache", "build", "dist"}


@dataclass
class IndexReport:
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    tokens: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def tokenizer_fingerprint(backend) -> str:
    """A hash of every token's bytes: equal for models that tokenise text the same way."""
    h = hashlib.sha256(str(backend.n_vocab).encode())
    for token in range(backend.n_vocab):
        piece = backend.token_bytes(token)
        h.update(len(piece).to_bytes(4, "little"))
        h.update(piece)
    return f"vocab{backend.n_vocab}:{h.hexdigest()[:16]}"


def walk_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Every file under the given files and folders, in a stable order, skipping tool folders."""
    for path in map(Path, paths):
        if not path.exists():
            raise DatastoreError(f"{path} does not exist")
        if path.is_file():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(files):
                yield Path(root) / name


def read_text(path: Path, report: IndexReport) -> str | None:
    """The file's text, or None (counted in the report) when it is too big, binary or unreadable."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            report.skip("larger than 4 MiB")
            return None
        data = path.read_bytes()
    except OSError:
        report.skip("unreadable")
        return None
    if b"\0" in data[:8192]:
        report.skip("binary")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        report.skip("not UTF-8")
        return None
    if not text.strip():
        report.skip("empty")
        return None
    return text


def build_index(backend, paths: Iterable[str | Path]) -> tuple[Datastore, IndexReport]:
    """Tokenise every readable text file under `paths` with the backend's tokenizer."""
    report = IndexReport()
    arrays: list[np.ndarray] = []
    for path in walk_files(paths):
        text = read_text(path, report)
        if text is None:
            continue
        tokens = np.asarray(backend.tokenize(text, add_special=False), np.int32)
        if tokens.size:
            arrays.append(tokens)
            report.files.append(path)
            report.tokens += int(tokens.size)
    if not arrays:
        raise DatastoreError("no text files found to index")
    return Datastore.build(arrays, tokenizer_fingerprint(backend)), report


def read_index(path: str | Path) -> Datastore:
    """Read an index for `--index` (before loading a model, so a bad path fails fast)."""
    if not Path(path).is_file():
        raise DatastoreError(f"index {path} does not exist; build one with `localspec index build`")
    return Datastore.load(path)


def write_index(store: Datastore, path: str | Path) -> None:
    """Write an index to `path`, replacing a file there only once the new one is complete."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        store.save(partial)
        partial.replace(target)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise DatastoreError(f"cannot write index {target}: {error.strerror or error}") from error


def check_index(store: Datastore, path: str | Path, backend) -> None:
    """Refuse an index built with a different tokenizer than the backend's."""
    expected = tokenizer_fingerprint(backend)
    if store.fingerprint != expected:
        raise DatastoreError(f"index {path} was built for another tokenizer ({store.fingerprint}, "
                             f"this model has {expected}); rebuild it with this model")
