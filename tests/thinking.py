"""Chat templates that make SmolLM2 a thinking model (none here was trained to think): the generation prompt
opens `<think>` as Qwen3's does, so the reply starts inside the reasoning."""

from __future__ import annotations

_TURNS = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'].split('</think>')[-1] "
    "if message['role'] == 'assistant' else message['content']) + '<|im_end|>\\n' }}{% endfor %}"
)
THINKING_TEMPLATE = _TURNS + "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
# Qwen3's switch: enable_thinking=false closes an empty reasoning in the prompt, and the model answers at once
SWITCHABLE_TEMPLATE = _TURNS + (
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% else %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)


def reference(template: str, question: str, n: int, think: bool | None = None, system: str = "") -> tuple[str | None, str]:
    """The engine's raw greedy continuation of the prompt `template` (a Jinja file) renders, as (reasoning, answer)."""
    from edgellm.engine.launch import plan_model
    from edgellm.engine.reasoning import opened_in, split_reasoning
    from edgellm.engine.runtime import Engine
    from edgellm.engine.sampling import Sampling

    with Engine.load(plan_model(None, chat_template=template)) as engine:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        prompt = engine.render_chat(messages, think=think)
        raw = "".join(engine.stream_prompt(prompt, Sampling(temperature=0.0, max_tokens=n)))
    return split_reasoning(raw, inside=opened_in(prompt))


def template_files(folder) -> dict[str, str]:
    """The templates as Jinja files for --chat-template: "switch" and "think"."""
    (folder / "switch.jinja").write_text(SWITCHABLE_TEMPLATE)
    (folder / "think.jinja").write_text(THINKING_TEMPLATE)
    return {"switch": str(folder / "switch.jinja"), "think": str(folder / "think.jinja")}
