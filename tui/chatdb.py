"""Chat history in SQLite: conversations, their messages, and the chat settings.

The schema is versioned with `PRAGMA user_version`; `MIGRATIONS[i]` takes a database from version i to i+1,
so an old file is brought forward when it is opened. Any SQLite failure (a corrupt file, a database locked by
another process) becomes a `ChatDBError` with one readable line; the chat UI then keeps going on an
in-memory database (`ChatDB.open_or_memory`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgellm.errors import EdgeError

MIGRATIONS: list[str] = [
    # 0 -> 1: conversations and their messages.
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        system_prompt TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        stopped INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX messages_by_conversation ON messages(conversation_id, seq);
    """,
    # 1 -> 2: generation stats per reply, and the settings screen's values.
    """
    ALTER TABLE messages ADD COLUMN stats TEXT;
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2 -> 3: a thinking model's reasoning, kept for display beside the answer.
    """
    ALTER TABLE messages ADD COLUMN thinking TEXT NOT NULL DEFAULT '';
    """,
    # 3 -> 4: the image files a message showed the model (a JSON list of paths).
    """
    ALTER TABLE messages ADD COLUMN images TEXT NOT NULL DEFAULT '[]';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
MEMORY = ":memory:"


class ChatDBError(EdgeError):
    """The chat database cannot be read or written (corrupt, locked, newer schema)."""


@dataclass
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str
    stopped: bool = False  # generation was stopped before the model finished
    stats: dict | None = None  # GenStats of an assistant reply, as a plain dict
    thinking: str = ""  # a thinking model's reasoning before its answer: shown, never sent back to the model
    images: tuple[str, ...] = ()  # image files attached to a user message, shown to a vision model before its text

    def as_chat(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    title: str = "New chat"
    model: str = ""
    system_prompt: str = ""
    messages: list[Message] = field(default_factory=list)
    id: int | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ConversationSummary:
    id: int
    title: str
    updated: float
    n_messages: int


def _describe(path: str, exc: sqlite3.Error) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        why = "it is locked by another program"
    elif "not a database" in text or "malformed" in text or "corrupt" in text:
        why = "the file is corrupt"
    else:
        why = text
    return f"chat history {path} cannot be used: {why}"


class ChatDB:
    """One SQLite connection. Use it from one thread (the UI's)."""

    def __init__(self, path: Path | str, timeout: float = 1.0) -> None:
        self.path = str(path)
        try:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)  # the data folder, made on first use
            self._db = sqlite3.connect(self.path, timeout=timeout)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise ChatDBError(_describe(self.path, exc)) from exc
        except OSError as exc:
            raise ChatDBError(f"chat history {self.path} cannot be used: {exc.strerror or exc}") from exc

    @classmethod
    def open_or_memory(cls, path: Path | str) -> tuple[ChatDB, str | None]:
        """Open `path`; if it cannot be used, an in-memory database and the reason why."""
        try:
            return cls(path), None
        except ChatDBError as exc:
            return cls(MEMORY), str(exc)

    @property
    def in_memory(self) -> bool:
        return self.path == MEMORY

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this edgellm ({SCHEMA_VERSION})")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # executescript commits first; the BEGIN/COMMIT makes each step all-or-nothing.
            self._db.executescript(f"BEGIN; {MIGRATIONS[target - 1]}; PRAGMA user_version = {target}; COMMIT;")

    def _run(self, fn):
        """Run fn(connection) in one transaction; SQLite errors become ChatDBError."""
        try:
            with self._db:
                return fn(self._db)
        except sqlite3.Error as exc:
            raise ChatDBError(_describe(self.path, exc)) from exc

    def schema_version(self) -> int:
        return self._run(lambda db: db.execute("PRAGMA user_version").fetchone()[0])

    def list_conversations(self) -> list[ConversationSummary]:
        rows = self._run(
            lambda db: db.execute(
                "SELECT c.id, c.title, c.updated, COUNT(m.id) FROM conversations c "
                "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id ORDER BY c.updated DESC, c.id DESC"
            ).fetchall()
        )
        return [ConversationSummary(*row) for row in rows]

    def load(self, conversation_id: int) -> Conversation:
        def read(db: sqlite3.Connection) -> Conversation:
            row = db.execute(
                "SELECT title, model, system_prompt, created, updated FROM conversations WHERE id = ?",
                (conversation_id,),
            ).fetchone()
            if row is None:
                raise ChatDBError(f"no conversation {conversation_id}")
            messages = [
                Message(role, content, bool(stopped), json.loads(stats) if stats else None, thinking, tuple(json.loads(images or "[]")))
                for role, content, stopped, stats, thinking, images in db.execute(
                    "SELECT role, content, stopped, stats, thinking, images FROM messages WHERE conversation_id = ? ORDER BY seq",
                    (conversation_id,),
                )
            ]
            return Conversation(row[0], row[1], row[2], messages, conversation_id, row[3], row[4])

        return self._run(read)

    def save(self, conv: Conversation) -> int:
        """Write the whole conversation (insert or replace its messages); sets and returns `conv.id`."""
        conv.updated = time.time()

        def write(db: sqlite3.Connection) -> int:
            fields = (conv.title, conv.model, conv.system_prompt, conv.updated)
            if conv.id is None or db.execute("SELECT 1 FROM conversations WHERE id = ?", (conv.id,)).fetchone() is None:
                cur = db.execute(
                    "INSERT INTO conversations (id, title, model, system_prompt, updated, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (conv.id, *fields, conv.created),
                )
                conv_id = cur.lastrowid
            else:
                conv_id = conv.id
                db.execute(
                    "UPDATE conversations SET title = ?, model = ?, system_prompt = ?, updated = ? WHERE id = ?",
                    (*fields, conv_id),
                )
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (conv_id,))
            db.executemany(
                "INSERT INTO messages (conversation_id, seq, role, content, stopped, stats, thinking, images) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (conv_id, seq, m.role, m.content, int(m.stopped), json.dumps(m.stats) if m.stats else None, m.thinking, json.dumps(list(m.images)))
                    for seq, m in enumerate(conv.messages)
                ],
            )
            return conv_id

        conv.id = self._run(write)
        return conv.id

    def rename(self, conversation_id: int, title: str) -> None:
        self._run(lambda db: db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id)))

    def delete(self, conversation_id: int) -> None:
        self._run(lambda db: db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)))

    def get_settings(self) -> dict:
        rows = self._run(lambda db: db.execute("SELECT key, value FROM settings").fetchall())
        return {key: json.loads(value) for key, value in rows}

    def put_settings(self, values: dict) -> None:
        self._run(
            lambda db: db.executemany(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in values.items()],
            )
        )

    def close(self) -> None:
        self._db.close()
