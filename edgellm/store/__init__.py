"""Models on this machine's disk: the store's folders (`store`), a package's `manifest` (its files, their sha256,
the quality and speed recorded per level), a name to a model's files (`models`), other tools' GGUF files linked
in (`importing`), and a package built from a checkpoint (`package`: convert, quantize, measure, write the card).

May import the shared helpers, `formats/`, `quantize/` and the lower floor of `engine/` (`package` scores the
levels it makes with `engine.quality`). Never asks the planner: a listing that needs "what fits here" lives
above it (`plan.catalog`). Imports nothing from `plan/`, `hub/`, the engine's upper floor, serve, commands or
the TUI.
"""
