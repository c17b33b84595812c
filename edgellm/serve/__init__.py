"""`edgellm serve`: OpenAI's, Ollama's and Anthropic's HTTP APIs over one model, its slots decoded together in
one batch.

`api` holds the OpenAI routes and what every API shares (reading bodies, preparing prompts, running jobs,
streaming, the key), `schemas` the typed requests, `ollama` and `anthropic` the other APIs (their requests in
`ollama_requests` and `anthropic_requests`), `names` the names the model answers to, `scheduler` the batching
loop that owns the llama.cpp context, `textstream` the token-to-text step with stop strings, `grammar` the
JSON constraints, `tools` the tool calls in a reply, `metrics` the counters, and `server` starts it all under
uvicorn.

Above the engine: imports `engine/` (runtime, the binding, sampling) and the shared helpers; never commands or
the TUI. Serving several models, loaded on demand, goes here.
"""
