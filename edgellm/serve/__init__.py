"""`edgellm serve`: an OpenAI-compatible HTTP API over one model, its slots decoded together in one batch.

`api` holds the routes and request checks, `schemas` the typed requests, `scheduler` the batching loop that
owns the llama.cpp context, `textstream` the token-to-text step with stop strings, `grammar` the JSON
constraints, `metrics` the counters, and `server` starts it all under uvicorn.

Above the engine: imports `engine/` (runtime, the binding, sampling) and the shared helpers; never commands or
the TUI. Serving several models, loaded on demand, goes here.
"""
