"""The engine: everything that runs a model through llama.cpp.

Two floors, one way up.

The lower floor talks to llama.cpp and knows nothing of plans: `llamacpp` (the binding: its log, devices,
Ctrl-C, LoRA handles), `sampling`, `chat_formats` and `chat_template` (messages to a prompt), `adapters` (LoRA
files), `rpc` (workers on other machines), `quality` (perplexity and KL divergence from llama.cpp's logits;
task evaluation goes beside it). It imports only the shared helpers and `formats/`; `plan/`, `store/` and
`quantize/` may use it.

The upper floor runs what the planner decided: `runtime` (`Engine.load(plan)`: one model and context, the token
stream, stop and stats; speculative decoding goes here), `measure` (tokens/s of a loaded engine, and tune's
sweep), `launch` (a model name and options to `plan_model` to `Engine`: the one path run, chat, serve and bench
take). It imports `plan/` and `store/`; nothing in them imports it.

Never imports commands, serve or the TUI; never parses CLI options (they arrive as plain values).
"""
