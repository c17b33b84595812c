#!/usr/bin/env python3
"""Generation speed in the chat UI vs `edgellm run`, same model and settings, in one run.

The chat runs as the installed `edgellm chat` inside tmux (a real terminal, so drawing costs what it costs
a user); each trial starts a new chat (Ctrl+N), sends the same prompt and waits for the reply. The speed is
the one the UI shows on its status line (read exactly from the chat database it saves with the reply). Each
chat trial is paired with one `edgellm run --json` of the same prompt, so both see the same machine load.

    .venv/bin/python scripts/bench_chat.py [--trials 5] [--max-tokens 128] [--model PATH] [--pane pane.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EDGELLM = Path(sys.executable).parent / "edgellm"
SYSTEM = "You are a helpful assistant."  # the chat's default system prompt, given to run as well
PROMPT = "Write a long story about a lighthouse keeper who finds a map in a bottle."


class Tmux:
    def __init__(self) -> None:
        self.socket = f"edgellm-bench-{os.getpid()}"

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def pane(self) -> str:
        return self("capture-pane", "-p", "-t", "chat")

    def wait_for(self, check, timeout: float = 600.0) -> str:
        end = time.monotonic() + timeout
        while not check(text := self.pane()):
            if time.monotonic() > end:
                raise SystemExit(f"timed out; the screen shows:\n{text}")
            time.sleep(0.1)
        return text

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def run_once(model: str | None, max_tokens: int) -> dict:
    cmd = [str(EDGELLM), "run", *([model] if model else []), "-p", PROMPT, "-s", SYSTEM, "-n", str(max_tokens), "--temp", "0", "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["stats"]


def replies(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM messages WHERE role = 'assistant'").fetchone()[0]
        except sqlite3.OperationalError:  # the chat is creating its tables
            return 0


def last_reply_stats(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        row = con.execute("SELECT stats FROM messages WHERE role = 'assistant' ORDER BY id DESC LIMIT 1").fetchone()
    return json.loads(row[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--model", help="a .gguf file or package folder (default: the demo model)")
    ap.add_argument("--pane", type=Path, help="write the chat's screen after the last reply to this file")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="edgellm-bench-"))
    db = home / "chats.sqlite3"
    chat = (
        f"env EDGELLM_HOME={shlex.quote(str(home))} {shlex.quote(str(EDGELLM))} chat "
        f"{shlex.quote(args.model) if args.model else ''} --temperature 0 --max-tokens {args.max_tokens}"
    )
    tmux = Tmux()
    tui, run = [], []
    try:
        tmux("new-session", "-d", "-s", "chat", "-x", "100", "-y", "30", chat)
        tmux.wait_for(lambda s: "ready │" in s)
        for trial in range(args.trials):
            tmux("send-keys", "-t", "chat", "C-n")
            time.sleep(0.3)
            tmux("send-keys", "-t", "chat", "-l", PROMPT)
            tmux("send-keys", "-t", "chat", "Enter")
            # Wait on the database, not the screen: capturing the pane costs CPU the chat would lose.
            end = time.monotonic() + 600
            while replies(db) < trial + 1:
                if time.monotonic() > end:
                    raise SystemExit(f"no reply; the screen shows:\n{tmux.pane()}")
                time.sleep(0.5)
            screen = tmux.wait_for(lambda s: "ready │" in s)
            stats = last_reply_stats(db)
            shown = re.search(r"([\d.]+) tok/s", screen).group(1)
            assert shown == f"{stats['gen_tps']:.1f}", (shown, stats["gen_tps"])  # the stored value is the shown one
            tui.append(stats)
            run.append(run_once(args.model, args.max_tokens))
            print(
                f"trial {trial + 1}: chat {tui[-1]['gen_tps']:6.1f} tok/s ({tui[-1]['gen_tokens']} tokens)   "
                f"run {run[-1]['gen_tps']:6.1f} tok/s ({run[-1]['gen_tokens']} tokens)",
                flush=True,
            )
        if args.pane:
            args.pane.write_text(screen)
        tmux("send-keys", "-t", "chat", "C-q")
    finally:
        tmux.kill()

    chat_tps = statistics.median(s["gen_tps"] for s in tui)
    run_tps = statistics.median(s["gen_tps"] for s in run)
    # Other programs' load swings from one trial to the next: the paired ratio is the robust number.
    pairs = [a["gen_tps"] / b["gen_tps"] for a, b in zip(tui, run)]
    print(
        f"median: chat {chat_tps:.1f} tok/s, run {run_tps:.1f} tok/s; chat/run per trial "
        f"{', '.join(f'{r:.2f}' for r in pairs)}; median ratio {statistics.median(pairs):.3f} (target >= 0.95)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
