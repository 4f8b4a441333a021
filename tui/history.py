"""Conversations in SQLite: a versioned schema (PRAGMA user_version) upgraded by ordered migrations.

Every write commits at once, so a crash loses at most the answer that was streaming. A write that
fails (a read-only file, another process holding the lock) raises HistoryError; nothing is half-written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from localspec.errors import LocalspecError


class HistoryError(LocalspecError):
    """The history database cannot be used (for example, written by a newer localspec)."""


def _v1(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created REAL NOT NULL
        );
        CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
    """)


def _v2(db: sqlite3.Connection) -> None:
    """Per-conversation settings, per-answer speculation stats, and small app state (last chat, theme)."""
    db.executescript("""
        ALTER TABLE conversations ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE messages ADD COLUMN stats TEXT;
        CREATE TABLE app_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """)


def _json_dict(text: str | None) -> dict | None:
    """A stored JSON object, or None where the value is missing or damaged (read as defaults)."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _storable(text: str) -> str:
    """Text SQLite can store: lone surrogates (undecodable bytes pasted in) become "?"."""
    return text.encode("utf-8", "replace").decode("utf-8")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2)
SCHEMA_VERSION = len(MIGRATIONS)
ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System"}  # as shown and exported


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION, one transaction per step; returns the version found."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise HistoryError(f"the chat history was written by a newer localspec (schema {found}, "
                           f"this version reads up to {SCHEMA_VERSION})")
    for version in range(found, SCHEMA_VERSION):
        with db:
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
    return found


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created: float
    updated: float
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StoredMessage:
    id: int
    role: str
    content: str
    stats: dict | None = None


class History:
    """One SQLite file of conversations. Used from the UI thread only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path))
            self._db.execute("PRAGMA foreign_keys = ON")
            migrate(self._db)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise HistoryError(f"cannot open the chat history {path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction; a failed write is a HistoryError naming the file."""
        try:
            with self._db:
                yield self._db
        except sqlite3.OperationalError as exc:
            raise HistoryError(f"cannot save to the chat history {self.path}: {exc}") from None

    # -- conversations -------------------------------------------------------------------------

    def conversations(self) -> list[Conversation]:
        """Most recently updated first."""
        rows = self._db.execute(
            "SELECT id, title, created, updated, settings FROM conversations ORDER BY updated DESC, id DESC")
        return [Conversation(i, t, c, u, _json_dict(s) or {}) for i, t, c, u, s in rows]

    def conversation(self, conversation_id: int) -> Conversation | None:
        row = self._db.execute("SELECT id, title, created, updated, settings FROM conversations "
                               "WHERE id = ?", (conversation_id,)).fetchone()
        return Conversation(row[0], row[1], row[2], row[3], _json_dict(row[4]) or {}) if row else None

    def create(self, title: str, settings: dict | None = None) -> Conversation:
        now = time.time()
        title = _storable(title)
        with self._writing() as db:
            cur = db.execute(
                "INSERT INTO conversations (title, created, updated, settings) VALUES (?, ?, ?, ?)",
                (title, now, now, json.dumps(settings or {})))
        return Conversation(cur.lastrowid, title, now, now, settings or {})

    def rename(self, conversation_id: int, title: str) -> None:
        with self._writing() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (_storable(title), conversation_id))

    def save_settings(self, conversation_id: int, settings: dict) -> None:
        with self._writing() as db:
            db.execute("UPDATE conversations SET settings = ? WHERE id = ?",
                       (json.dumps(settings), conversation_id))

    def delete(self, conversation_id: int) -> None:
        with self._writing() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- messages ------------------------------------------------------------------------------

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        rows = self._db.execute("SELECT id, role, content, stats FROM messages WHERE conversation_id = ? "
                                "ORDER BY id", (conversation_id,))
        return [StoredMessage(i, r, c, _json_dict(s)) for i, r, c, s in rows]

    def add_message(self, conversation_id: int, role: str, content: str,
                    stats: dict | None = None) -> StoredMessage:
        now = time.time()
        content = _storable(content)
        with self._writing() as db:
            cur = db.execute(
                "INSERT INTO messages (conversation_id, role, content, created, stats) "
                "VALUES (?, ?, ?, ?, ?)",
                (conversation_id, role, content, now, json.dumps(stats) if stats is not None else None))
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        return StoredMessage(cur.lastrowid, role, content, stats)

    def delete_message(self, message_id: int) -> None:
        with self._writing() as db:
            db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    # -- app state -----------------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM app_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str) -> None:
        with self._writing() as db:
            db.execute("INSERT INTO app_state (key, value) VALUES (?, ?) "
                       "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
