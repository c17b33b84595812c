"""edgellm: package open LLM checkpoints as quantized GGUF sets and run them on a laptop."""

__version__ = "0.1.0"
