"""GGUF files as edgellm reads them: a file's header, metadata and tensor table (`gguf_info`), and the checks
that tell a damaged or unsupported file from a good one before llama.cpp sees it (`gguf_checks`).

The floor of the house: whatever looks into a .gguf file (store, planner, engine, hub, quantize) reads it here.
May import only the shared helpers at edgellm's top (`errors`) and the `gguf` package.
"""
