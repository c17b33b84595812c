"""The `edgellm` subcommands, one module each, imported only when run (`edgellm.cli` lists them), and `options`,
the click option types they share (so each kind of value is checked one way).

A thin shell: take the options, call the library, print. Logic another front end needs (the chat, serve) lives
below. May import every package below it and the TUI (`chat`); only `edgellm.cli` imports it.
"""
