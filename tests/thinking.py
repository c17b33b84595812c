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
