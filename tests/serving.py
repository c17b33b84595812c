"""A real `edgellm serve` in a subprocess for the server tests: started on a free loopback port, its address read
from the line it prints once it takes connections, its log kept, stopped with Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import openai

from edgellm.testhooks import ENV

EDGELLM = str(Path(sys.executable).parent / "edgellm")
KEY = "test-key-1234"
WAIT_S = 300  # a failure guard for waits on events, never a pacing delay
# SmolLM2's own template, plus what a tool-calling template adds: the functions in a system message, earlier
# calls as <tool_call> blocks, and results as <tool_response>
TOOLS_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\nYou call functions. Write each call as <tool_call>{\\\"name\\\": ..., \\\"arguments\\\": {...}}</tool_call>. "
    "Functions:\\n' }}{% for t in tools %}{{ t | tojson }}{{ '\\n' }}{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{%- for message in messages %}{% if loop.first and messages[0]['role'] != 'system' and not tools %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
    "{%- if message.tool_calls %}{{ '<|im_start|>assistant\\n' }}{% for c in message.tool_calls %}{{ '<tool_call>' }}"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}{{ '</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}{{ '<|im_start|>user\\n<tool_response>' + message['content'] + '</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}}}}
# the same functions as Anthropic's tools
ANTHROPIC_WEATHER = {"name": WEATHER["function"]["name"], "description": WEATHER["function"]["description"],
                     "input_schema": WEATHER["function"]["parameters"]}
ANTHROPIC_TIME = {"name": TIME["function"]["name"], "input_schema": TIME["function"]["parameters"]}


class Server:
    """A running `edgellm serve`; its address comes from the line it prints once it takes connections. Without a
    model among `args`, the demo model (or, with `store=True`, the store's models)."""

    def __init__(self, *args: str, store: bool = False, env: dict | None = None, threads: str | None = "1",
                 pause: str | None = None):
        """`threads=None` lets the server choose them (and follow the load) as a user's would. `pause` names a
        test pause point (edgellm/testhooks.py), e.g. `serve.token:3`: the first reply to reach it is held there
        until its client leaves or the server stops, so a test acts mid-stream on any machine, fast or slow."""
        if not store and (not args or args[0].startswith("-")):
            from fixtures import smollm2_gguf

            args = (str(smollm2_gguf()), *args)
        fixed = ["-t", threads] if threads else []
        if pause:
            env = {**(env or os.environ), ENV: pause}
        self.proc = subprocess.Popen([EDGELLM, "serve", "--port", "0", *fixed, *args], stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        for line in self.proc.stderr:
            self.log.append(line)
            if m := re.match(r"serving .* at (http://\S+)/v1 ", line):
                self.url = m.group(1)
                break
        else:
            raise AssertionError("the server ended before serving:\n" + "".join(self.log))
        self._drain = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self._drain.start()

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=WAIT_S)

    def http(self, key: str | None = KEY) -> httpx2.Client:
        return httpx2.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=WAIT_S)

    def health(self) -> dict:
        return httpx2.get(self.url + "/health").json()

    def metric(self, name: str) -> float:
        text = httpx2.get(self.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        return float(re.search(rf"^edgellm_{name} (\S+)$", text, re.M).group(1))

    def wait_idle(self) -> None:
        """Until no slot is busy and nothing waits: polls the server's own state, bounded by WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while (h := self.health())["slots_processing"] or h["queue"]:
            assert time.monotonic() < deadline, "a slot stayed busy"
            time.sleep(0.05)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        """Stopped with Ctrl-C, which must end it cleanly (checked unless the block failed already)."""
        rc, log = self.interrupt()
        assert exc[0] is not None or (rc == 130 and "Traceback" not in log), log

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=WAIT_S)
        self._drain.join()
        return rc, "".join(self.log)


def running(*args: str, **kw):
    """A Server for a fixture to yield: stopped with Ctrl-C afterwards, which must end it cleanly."""
    with Server(*args, **kw) as s:
        yield s


def make_template_gguf(folder: Path, name: str, template: str) -> Path:
    """SmolLM2 with another chat template, as `smollm2-NAME.gguf`."""
    from fixtures import smollm2_gguf

    (folder / f"{name}.jinja").write_text(template)
    out = folder / f"smollm2-{name}.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(smollm2_gguf()), str(out), "--chat-template-file",
                    str(folder / f"{name}.jinja"), "--force"], check=True, capture_output=True, timeout=WAIT_S)
    return out


def make_tools_gguf(folder: Path) -> Path:
    """SmolLM2 with a chat template that takes tools."""
    return make_template_gguf(folder, "tools", TOOLS_TEMPLATE)
