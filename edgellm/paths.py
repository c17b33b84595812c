"""Where edgellm keeps its data: the platform's user dirs, overridable for tests and scripts."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "edgellm"


def data_dir() -> Path:
    """Packages, the chat database. `EDGELLM_HOME` moves everything (tests, portable installs)."""
    home = os.environ.get("EDGELLM_HOME")
    return Path(home) if home else Path(platformdirs.user_data_dir(APP))


def cache_dir() -> Path:
    home = os.environ.get("EDGELLM_HOME")
    return Path(home) / "cache" if home else Path(platformdirs.user_cache_dir(APP))


def store_dir() -> Path:
    return data_dir() / "models"


def chat_db_path() -> Path:
    return data_dir() / "chats.sqlite3"
