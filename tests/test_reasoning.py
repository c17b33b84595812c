"""The reasoning splitter on text: whole replies, and the same replies cut into pieces at every place (tags split
across pieces), which must give the same parts."""

from __future__ import annotations

import pytest

from edgellm.engine.reasoning import CONTENT, REASONING, ReasoningSplitter, opened_in, split_reasoning, thinks

CASES = [
    # reply, the prompt opened the thinking, (reasoning, content)
    ("<think>\nLet me see: 2+2.\n</think>\n\nIt is 4.", False, ("Let me see: 2+2.\n", "It is 4.")),
    ("  <think>a < b</think>b", False, ("a < b", "b")),
    ("<think></think>\n\nJust the answer.", False, ("", "Just the answer.")),
    ("No thinking here, <think> in the middle stays.", False, (None, "No thinking here, <think> in the middle stays.")),
    ("\n  plain", False, (None, "\n  plain")),
    ("Counting </thi", True, ("Counting </thi", "")),  # cut off before the tag closed: all reasoning
    ("\nstill thinking</think>done", True, ("still thinking", "done")),
    ("<think>unfinished", False, ("unfinished", "")),
    ("<thi", False, (None, "<thi")),
    ("", False, (None, "")),
    # harmony (GPT-OSS): the analysis channel's message, then the final channel's
    ("<|channel|>analysis<|message|>Let me see.<|end|><|start|>assistant<|channel|>final<|message|>It is 4.", False,
     ("Let me see.", "It is 4.")),
    ("<|channel|>final<|message|>Just this.", False, (None, "Just this.")),
    ("<|channel|>analysis<|message|>cut off <|en", False, ("cut off <|en", "")),
    ("<|channel|>analysis<|message|>done<|end|>no header", False, ("done", "no header")),
    ("<|channel|>analysis<|message|>a<|end|><|start|>assist", False, ("a", "<|start|>assist")),  # cut off in the header
    ("thinking on<|end|><|start|>assistant<|channel|>final<|message|>ok", "<|channel|>analysis<|message|>", ("thinking on", "ok")),
    ("<|channel|>commentary<|message|>a tool's preamble", False, (None, "<|channel|>commentary<|message|>a tool's preamble")),
]


def _streamed(reply: str, inside: bool, cuts: list[int]) -> tuple[str | None, str]:
    s = ReasoningSplitter(inside)
    parts = []
    last = 0
    for at in [*cuts, len(reply)]:
        parts += s.push(reply[last:at])
        last = at
    parts += s.flush()
    kinds = [p.kind for p in parts]
    assert kinds == sorted(kinds, key=[REASONING, CONTENT].index), kinds  # reasoning first, never after the answer
    reasoning = "".join(p.text for p in parts if p.kind == REASONING)
    return (reasoning if s.thought else None), "".join(p.text for p in parts if p.kind == CONTENT)


@pytest.mark.parametrize("reply, inside, expected", CASES)
def test_whole_replies_split_into_reasoning_and_answer(reply, inside, expected):
    assert split_reasoning(reply, inside) == expected


@pytest.mark.parametrize("reply, inside, expected", CASES)
def test_every_cut_into_two_or_three_pieces_gives_the_same_parts(reply, inside, expected):
    n = len(reply)
    for i in range(n + 1):
        assert _streamed(reply, inside, [i]) == expected, i
        for j in range(i, n + 1, 3):
            assert _streamed(reply, inside, [i, j]) == expected, (i, j)
    assert _streamed(reply, inside, list(range(1, n))) == expected  # one character at a time


def test_templates_and_prompts_that_think():
    assert thinks("{% if enable_thinking %}<think>\n\n</think>{% endif %}") and not thinks("{{ messages }}") and not thinks(None)
    assert opened_in("<|im_start|>assistant\n<think>\n") and not opened_in("<|im_start|>assistant\n")


def test_a_reply_counts_the_pieces_spent_thinking():
    from edgellm.engine.reasoning import Reply, switch_note, switchable

    r = Reply(inside=True)
    for piece in ["Let", " me", " see", "</th", "ink>", "\n\n", "It", " is 4."]:
        r.push(piece)
    r.flush()
    assert r.split() == ("Let me see", "It is 4.") and r.thinking_pieces == 5  # "ink>" closed it: counted
    plain = Reply()
    for piece in ["It", " is 4."]:
        plain.push(piece)
    assert plain.split() == (None, "It is 4.") and plain.thinking_pieces == 0
    switch = "{% if enable_thinking is false %}<think></think>{% endif %}</think>"
    assert switchable(switch) and not switchable("</think>") and switch_note(switch, False) is None
    assert switch_note("</think>", True) == "thinking cannot be switched on with this chat template (it does not read enable_thinking): ignored"
    assert switch_note(None, None) is None


def test_harmony_templates_think_and_switch_by_reasoning_effort():
    from arch_fixtures import GPT_OSS_TEMPLATE
    from edgellm.engine.reasoning import HARMONY, switch_note, switch_variables, switchable

    template = GPT_OSS_TEMPLATE.read_text()
    assert thinks(template) and switchable(template) and switch_note(template, False) is None
    assert switch_variables(template, True) == {"reasoning_effort": "high"}
    assert switch_variables(template, False) == {"reasoning_effort": "low"} and switch_variables(template, None) is None
    assert switch_variables(template, "medium") == {"reasoning_effort": "medium"}
    assert switch_variables(template, "minimal") == {"reasoning_effort": "low"}  # the least effort harmony models were taught
    assert switch_variables("{% if enable_thinking %}</think>{% endif %}", False) == {"enable_thinking": False}
    assert switch_variables("{% if enable_thinking %}</think>{% endif %}", "low") == {"enable_thinking": True}
    assert opened_in("<|start|>assistant") == "" and opened_in("<|start|>assistant" + HARMONY.open) == HARMONY.open


def test_requests_pass_an_effort_through():
    """OpenAI's reasoning_effort and Ollama's think reach the template as the effort asked for ("none": off)."""
    from edgellm.serve import ollama_requests, schemas

    assert schemas._think({"reasoning_effort": "medium"}) == "medium" and schemas._think({"reasoning_effort": "none"}) is False
    assert schemas._think({}) is None
    chat = lambda think: ollama_requests.chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "think": think}, "m")  # noqa: E731
    assert chat("low").think == "low" and chat(False).think is False and chat(True).think is True
