"""Hugging Face and ModelScope: `clients` (the hubs' own libraries and their errors), `download` (the files a repo's
model needs, fetched into the hubs' caches), `ranges` and `headers` (GGUF and safetensors headers read by byte
ranges before anything is downloaded), `publish` (a package uploaded), `remote_plan` (which level of a repo runs
here, judged by the planner from those headers) and `model` (a hub id to a model in the store: pulled at the level
that fits, or packaged from its checkpoint).

Above `store/` and `plan/`: the hub pulls into the store, never the other way. Only `remote_plan` and `model` ask
the planner, through `make_plan` and the machine's `HardwareProfile`; the others import nothing from `plan/`, and
none knows the planner's devices. Never imports the engine's upper floor, serve, commands or the TUI.
"""
