"""`edgellm chat`, the Textual app (installed as `edgellm.tui`).

`app` is the shell (layout, history, the action table keys and palette share), `chat` the conversation flow,
`worker` the engine contract and the threads that load a model and write replies, `backend` the link to the
engine (`edgellm.engine.launch`), `state` the plain values, `chatdb` the history in SQLite, `screens/` and
`widgets/` the rest of the UI, `chat.tcss` its one stylesheet.

Talks to llama.cpp only through `edgellm.engine` (never `engine.llamacpp`); nothing below commands imports it.
"""
