"""The README's commands as a newcomer runs them: a copy of the project, an empty home folder, no
EDGELLM_HOME or XDG variables, nothing of edgellm created beforehand."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_tui_tmux import QUESTION, Tmux

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)


def readme_commands() -> list[str]:
    """The set-up commands in the README's "Set up" section, in order: run the chat, run the tests."""
    section = ROOT.joinpath("README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(python3 -m venv .+)\n```", section)


def newcomer_env(home: Path) -> dict[str, str]:
    """This process's environment as a new user's shell would have it: an empty HOME and none of the variables
    that move edgellm's folders. pip keeps using this machine's wheel cache (llama.cpp takes minutes to build)."""
    pip_cache = subprocess.run([PYTHON, "-m", "pip", "cache", "dir"], capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "EDGELLM_HOME" and not k.startswith("XDG_")}
    env.update(HOME=str(home), PIP_CACHE_DIR=pip_cache or str(Path.home() / ".cache" / "pip"))
    env.pop("VIRTUAL_ENV", None)
    return env


def copy_project(dest: Path) -> Path:
    """The files a clone has (tracked, plus new ones git does not ignore), without this checkout's venv or caches."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_readme_has_both_commands_and_ci_runs_the_test_command():
    chat, tests = readme_commands()
    assert chat.endswith("edgellm chat") and "[demo]" in chat
    assert "pytest" in tests
    ci = ROOT.joinpath(".ci", "run").read_text()
    assert tests in ci.splitlines(), ".ci/run must run the README's test command exactly as written"


@pytest.mark.slow
def test_readme_first_command_from_an_empty_home(tmp_path):
    """The README's first command in a real terminal: the chat opens, answers, quits with exit 0; then the other
    everyday commands work from the same fresh home, and the data folder is made with normal permissions."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    chat_command = readme_commands()[0]
    project = copy_project(tmp_path / "edgellm")
    home = tmp_path / "home"
    home.mkdir()
    env = newcomer_env(home)
    exit_file = tmp_path / "exit-code"
    shell = f"cd {shlex.quote(str(project))} && {chat_command}; echo $? > {shlex.quote(str(exit_file))}"
    tmux = Tmux(f"edgellm-first-run-{os.getpid()}")
    try:
        tmux("new-session", "-d", "-s", "chat", "-x", "100", "-y", "30",
             "env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " bash -c " + shlex.quote(shell))
        # pip installs first (a minute or more), then the chat opens
        tmux.wait_for(lambda s: "ready │" in s or exit_file.exists(), timeout=1500)
        assert not exit_file.exists(), f"the command ended before the chat opened:\n{tmux.pane()}"
        tmux("send-keys", "-t", "chat", "-l", QUESTION)
        tmux("send-keys", "-t", "chat", "Enter")
        tmux.wait_for(lambda s: "Paris" in s and "ready │" in s and "– tok/s" not in s)
        tmux("send-keys", "-t", "chat", "C-q")
        end = time.monotonic() + 60  # the pane closes with the command: wait on the file, not the screen
        while not exit_file.exists():
            assert time.monotonic() < end, "the chat did not quit after Ctrl+Q"
            time.sleep(0.1)
        assert exit_file.read_text().strip() == "0"
    finally:
        tmux.kill()

    data = home / ".local" / "share" / "edgellm"
    assert (data / "chats.sqlite3").is_file()
    assert stat.S_IMODE(data.stat().st_mode) == 0o777 & ~_umask()

    edgellm = project / ".venv" / "bin" / "edgellm"
    before = set(home.rglob("*"))  # pip and the shell leave their own files; edgellm may add only its folders
    for args in (["run", "-p", QUESTION, "--temp", "0", "-n", "24"], ["list"], ["hw"], ["plan"], ["list", "--json"]):
        done = subprocess.run([edgellm, *args], capture_output=True, text=True, env=env, cwd=home, timeout=300)
        assert done.returncode == 0, f"edgellm {' '.join(args)}: {done.stderr}"
        assert "Traceback" not in done.stderr
    ours = (data, home / ".cache" / "edgellm")
    outside = [p for p in set(home.rglob("*")) - before if not any(p == d or d in p.parents for d in ours)]
    assert outside == [], "nothing may be written outside edgellm's user folders"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
