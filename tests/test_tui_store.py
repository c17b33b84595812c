"""The chat's SQLite store and the chat logic that needs no model: migration, corrupt and locked
databases, settings, context fitting, code blocks."""

from __future__ import annotations

import sqlite3

import pytest

from edgellm.tui.chatdb import MIGRATIONS, SCHEMA_VERSION, ChatDB, ChatDBError, Conversation, Message
from edgellm.tui.state import ChatSettings, ContextFull, code_blocks, fit_context, reply_budget, title_from


def test_conversations_round_trip_rename_delete(tmp_path):
    db = ChatDB(tmp_path / "chats.sqlite3")
    conv = Conversation(title="First", model="m.gguf", system_prompt="Be brief.")
    conv.messages = [Message("user", "Hi"), Message("assistant", "Hel", stopped=True, stats={"gen_tokens": 1})]
    first = db.save(conv)
    second = db.save(Conversation(title="Second", messages=[Message("user", "Yo")]))
    assert [s.title for s in db.list_conversations()] == ["Second", "First"]  # newest first

    loaded = db.load(first)
    assert (loaded.title, loaded.model, loaded.system_prompt) == ("First", "m.gguf", "Be brief.")
    assert loaded.messages == conv.messages

    conv.messages.append(Message("user", "More"))
    assert db.save(conv) == first  # saving again updates in place
    assert len(db.load(first).messages) == 3

    db.rename(second, "Renamed")
    db.delete(first)
    assert [(s.id, s.title, s.n_messages) for s in db.list_conversations()] == [(second, "Renamed", 1)]
    db.close()
    # Deleting a conversation deletes its messages (foreign key cascade).
    raw = sqlite3.connect(tmp_path / "chats.sqlite3")
    assert raw.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1


def test_old_schema_is_migrated_and_keeps_its_chats(tmp_path):
    path = tmp_path / "chats.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    raw.execute("INSERT INTO conversations (title, created, updated) VALUES ('old chat', 1, 1)")
    raw.execute("INSERT INTO messages (conversation_id, seq, role, content) VALUES (1, 0, 'user', 'hello')")
    raw.commit()
    raw.close()

    db = ChatDB(path)
    assert db.schema_version() == SCHEMA_VERSION == 4
    conv = db.load(1)
    assert conv.title == "old chat" and conv.messages == [Message("user", "hello")]
    db.put_settings({"temperature": 0.2})  # the table version 2 added
    assert db.get_settings() == {"temperature": 0.2}
    conv.messages.append(Message("assistant", "Hi!", thinking="A greeting."))  # the column version 3 added
    db.save(conv)
    assert db.load(1).messages[-1].thinking == "A greeting."


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "chats.sqlite3"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ChatDBError, match="newer than this edgellm"):
        ChatDB(path)


def test_corrupt_file_falls_back_to_memory(tmp_path):
    path = tmp_path / "chats.sqlite3"
    path.write_bytes(b"this is no database" * 100)
    with pytest.raises(ChatDBError, match="corrupt"):
        ChatDB(path)
    db, problem = ChatDB.open_or_memory(path)
    assert db.in_memory and "corrupt" in problem and str(path) in problem
    db.save(Conversation(messages=[Message("user", "still works")]))
    assert len(db.list_conversations()) == 1
    assert path.read_bytes().startswith(b"this is no database")  # the user's file is left alone


def test_locked_database_is_reported(tmp_path):
    path = tmp_path / "chats.sqlite3"
    ChatDB(path).close()
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        db, problem = ChatDB.open_or_memory(path)
        assert db.in_memory and "locked" in problem
    finally:
        holder.rollback()
    # Locked after opening: writes fail with the same readable reason.
    db = ChatDB(path, timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(ChatDBError, match="locked"):
        db.save(Conversation(messages=[Message("user", "x")]))
    holder.rollback()


def test_settings_ignore_unknown_and_mistyped_values():
    s = ChatSettings.from_dict({"temperature": 0, "top_k": "lots", "max_tokens": 64, "bogus": 1, "seed": True})
    assert (s.temperature, s.top_k, s.max_tokens, s.seed) == (0.0, ChatSettings.top_k, 64, -1)
    assert ChatSettings.from_dict(s.to_dict()) == s
    assert s.sampling().seed is None and ChatSettings(seed=7).sampling().seed == 7


def test_fit_context_drops_oldest_turns_and_keeps_the_system_prompt():
    count = lambda messages: sum(len(m["content"].split()) for m in messages)  # noqa: E731 - words as tokens
    system = {"role": "system", "content": "be brief"}
    turns = [{"role": r, "content": f"{r} says five words here"} for r in ("user", "assistant") * 3]
    turns.append({"role": "user", "content": "last question"})
    fitted = fit_context([system, *turns], count, budget=2 + 5 + 5 + 2)
    assert fitted.messages[0] == system and fitted.messages[-1] == turns[-1]
    assert fitted.dropped == 4 and fitted.messages[1]["role"] == "user"
    assert fitted.prompt_tokens <= 14
    assert fit_context([system, *turns], count, budget=1000).dropped == 0
    with pytest.raises(ContextFull):
        fit_context([system, {"role": "user", "content": "far too long " * 10}], count, budget=5)
    assert reply_budget(2048, 512) == 1536 and reply_budget(256, 512) == 128


def test_code_blocks_and_titles():
    text = "Try:\n```python\nprint(1)\n```\nor\n~~~\nls -l\n~~~\nand\n```sh\necho unfinished"
    assert code_blocks(text) == ["print(1)", "ls -l", "echo unfinished"]
    assert code_blocks("no code") == []
    assert title_from("  What is\nthe capital of France?  ") == "What is the capital of France?"
    assert title_from("word " * 20).endswith("…") and len(title_from("word " * 20)) <= 41
