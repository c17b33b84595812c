"""Tool calls in a reply: the `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks that
tool-calling chat templates (Hermes, Qwen 2.5, SmolLM3, ...) teach their models to write, as OpenAI's
`tool_calls`. A block that does not parse, or names a function the request did not offer, stays text."""

from __future__ import annotations

import json
import re
import uuid

BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def parse_tool_calls(text: str, tools: tuple[dict, ...]) -> tuple[str | None, list[dict]]:
    """The reply's text outside the calls (None if nothing is left) and the calls, OpenAI-shaped."""
    offered = {t["function"]["name"] for t in tools}
    calls, kept = [], []
    last = 0
    for m in BLOCK.finditer(text):
        try:
            call = json.loads(m.group(1))
        except ValueError:
            continue
        if not isinstance(call, dict) or call.get("name") not in offered:
            continue
        args = call.get("arguments", {})
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"], "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}})
        kept.append(text[last : m.start()])
        last = m.end()
    if not calls:
        return text, []
    content = ("".join(kept) + text[last:]).strip()
    return content or None, calls
