"""`edgellm verify`: re-hash a package's files and check them against its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("verify")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(folder: Path, as_json: bool) -> int:
    """Check every file listed in FOLDER/manifest.json: present, same size, same sha256 (every part of a
    level split in several files)."""
    from ..errors import EdgeError
    from ..store.manifest import Manifest

    m = Manifest.load(folder)
    problems = m.verify(folder)
    n = sum(len(f.listed) for f in m.files) + (m.projector is not None)
    if as_json:
        click.echo(json.dumps({"folder": str(folder), "ok": not problems, "files": n,
                               "problems": [{"file": p.file, "problem": p.what} for p in problems]}, indent=2))
    elif not problems:
        click.echo(f"{folder}: all {n} file(s) match manifest.json")
    if problems:
        if not as_json:
            for p in problems:
                click.echo(f"{p.file}: {p.what}", err=True)
        raise EdgeError(f"{len(problems)} of {n} file(s) in {folder} do not match manifest.json")
    return 0
