"""End to end: the installed `edgellm chat` in a real terminal (tmux), asked a question, quit cleanly."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

EDGELLM = Path(sys.executable).parent / "edgellm"  # the venv's installed command
QUESTION = "What is the capital of France? Answer in one sentence."


class Tmux:
    """One tmux server on its own socket, so the test never touches the user's sessions."""

    def __init__(self, name: str) -> None:
        self.socket = name

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def pane(self) -> str:
        return self("capture-pane", "-p", "-t", "chat")

    def wait_for(self, check, timeout: float = 180.0) -> str:
        end = time.monotonic() + timeout
        while True:
            text = self.pane()
            if check(text):
                return text
            assert time.monotonic() < end, f"timed out; the screen shows:\n{text}"
            time.sleep(0.2)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)

    def ask_and_quit(self, exit_file: Path) -> str:
        """Ask QUESTION in the open chat, wait for an answer naming Paris with its speed shown, quit with Ctrl+Q
        and check the command (which writes its exit code to `exit_file`) ended with 0; the answer's screen."""
        self("send-keys", "-t", "chat", "-l", QUESTION)
        self("send-keys", "-t", "chat", "Enter")
        screen = self.wait_for(lambda s: "Paris" in s and "ready │" in s and "tok/s" in s and "– tok/s" not in s)
        self("send-keys", "-t", "chat", "C-q")
        end = time.monotonic() + 30
        while not exit_file.exists():
            assert time.monotonic() < end, f"did not quit; the screen shows:\n{self.pane()}"
            time.sleep(0.1)
        assert exit_file.read_text().strip() == "0"
        return screen


@pytest.mark.slow
def test_installed_chat_answers_in_tmux_and_quits_cleanly(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    assert EDGELLM.exists(), f"{EDGELLM} is not installed: pip install -e '.[test,demo]'"
    exit_file = tmp_path / "exit-code"
    command = (
        f"env EDGELLM_HOME={shlex.quote(os.environ['EDGELLM_HOME'])} "
        f"{shlex.quote(str(EDGELLM))} chat --temperature 0 --max-tokens 32; echo $? > {shlex.quote(str(exit_file))}"
    )
    tmux = Tmux(f"edgellm-test-{os.getpid()}")
    try:
        tmux("new-session", "-d", "-s", "chat", "-x", "80", "-y", "24", command)
        tmux.wait_for(lambda s: "ready │" in s and "CPU only" in s)
        screen = tmux.ask_and_quit(exit_file)
        (tmp_path / "pane.txt").write_text(screen)
        assert "You" in screen and "Assistant" in screen and "capital of France" in screen
        assert "^n New" in screen and "Q4_1" in screen  # footer keys and the model's quant level
    finally:
        tmux.kill()
