"""The SQLite history: schema versions, migrations and the operations the app uses."""

from __future__ import annotations

import sqlite3

import pytest

from tui.history import MIGRATIONS, SCHEMA_VERSION, History, HistoryError


def test_a_new_file_gets_the_current_schema(tmp_path):
    History(tmp_path / "h.sqlite3").close()
    db = sqlite3.connect(tmp_path / "h.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)


def test_a_version_1_file_is_migrated_keeping_its_conversations(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO conversations (title, created, updated) VALUES ('old chat', 1, 2)")
    db.execute("INSERT INTO messages (conversation_id, role, content, created) VALUES (1, 'user', 'hi', 1)")
    db.commit()
    db.close()

    history = History(path)
    [conversation] = history.conversations()
    assert conversation.title == "old chat" and conversation.settings == {}
    assert [(m.role, m.content, m.stats) for m in history.messages(conversation.id)] == [("user", "hi", None)]
    history.set_state("theme", "nord")
    assert history.get_state("theme") == "nord"


def test_a_file_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "new.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(HistoryError, match="newer localspec"):
        History(path)


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HistoryError, match="cannot open"):
        History(path)


def test_a_folder_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "data").write_text("a file where the folder should be")
    with pytest.raises(HistoryError, match="cannot open the chat history"):
        History(tmp_path / "data" / "chat.sqlite3")


def test_conversations_messages_and_cascading_delete(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    a = history.create("a", {"temperature": 0.5})
    b = history.create("b")
    history.add_message(a.id, "user", "question", None)
    answer = history.add_message(a.id, "assistant", "answer", {"tokens": 3})
    assert [c.id for c in history.conversations()] == [a.id, b.id]  # most recently written first
    assert history.messages(a.id)[-1].stats == {"tokens": 3}
    history.rename(b.id, "renamed")
    history.save_settings(b.id, {"top_k": 4})
    renamed = history.conversation(b.id)
    assert renamed.title == "renamed" and renamed.settings == {"top_k": 4}
    history.delete_message(answer.id)
    assert [m.content for m in history.messages(a.id)] == ["question"]
    history.delete(a.id)
    assert history.conversation(a.id) is None and history.messages(a.id) == []


def test_damaged_json_values_read_as_missing(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    conversation = history.create("t", {"top_k": 4})
    history.add_message(conversation.id, "assistant", "answer", {"tokens": 3})
    history._db.execute("UPDATE conversations SET settings = '[1,2]'")
    history._db.execute("UPDATE messages SET stats = '{not json'")
    history._db.commit()
    assert history.conversation(conversation.id).settings == {} == history.conversations()[0].settings
    assert history.messages(conversation.id)[0].stats is None


def test_text_with_lone_surrogates_is_stored(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    conversation = history.create("bad \udcff title")
    stored = history.add_message(conversation.id, "user", "bad \udcff bytes")
    assert history.conversations()[0].title == "bad ? title"
    assert stored.content == history.messages(conversation.id)[0].content == "bad ? bytes"


def test_a_failed_write_is_a_history_error(tmp_path):
    path = tmp_path / "h.sqlite3"
    History(path).close()
    history = History(path)
    history._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # as on a read-only mount
    with pytest.raises(HistoryError, match="cannot save to the chat history .*readonly"):
        history.create("t")
    with pytest.raises(HistoryError, match="readonly"):
        history.set_state("theme", "nord")
