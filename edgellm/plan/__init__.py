"""What runs here and how: the machine, the memory and speed a model will have on it, and the plan.

`hardware` (RAM, cores, the GPUs of the ggml libllama loaded; devices join it here), `memory` (weights, KV cache
and compute buffers, from a GGUF header and llama.cpp's dry run), `speed` (tokens/s predicted from what this
machine measured), `placement` (which tensors stay in RAM), `planner` (`make_plan` -> `Plan`: which level, layers
per device, context, KV type, each choice explained), `split` (a plan over RPC workers), `tune` (the settings
`edgellm tune` found fastest, kept per machine), `catalog` (the stored models, each judged against this machine:
the listing that needs the planner, above it and not in the store).

May import the shared helpers, `formats/`, `store/` (the models it plans for) and the lower floor of `engine/`
(the binding, adapters, rpc). Never loads a model: nothing here imports the engine's upper floor (runtime,
measure, launch), the hub, serve, commands or the TUI.
"""
