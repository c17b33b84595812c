"""`edgellm bench`: speed and quality per quant level, the numbers behind "which file should I use?".

`run` measures (each file in a child process, through the same engine as run and chat) and defines the JSON
report (schema "edgellm.bench", version 1, documented there; fields are only added); `report` turns reports into
table columns, CSV, Markdown, merged runs and manifest records; `plot` draws speed and KL divergence against size.

Above the engine: may import `engine/` (launch, runtime, measure, quality), `plan/`, `store/` and the shared
helpers. Only commands import it.
"""
