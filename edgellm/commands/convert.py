"""`edgellm convert`: a Hugging Face checkpoint folder -> one GGUF file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import EdgeError

OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), help="GGUF file to write [default: ./<folder>-<outtype>.gguf].")
@click.option(
    "--outtype",
    type=click.Choice(OUTTYPES),
    default="auto",
    show_default=True,
    help="Tensor type of the weights; auto keeps the checkpoint's precision (bf16 stays bf16).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary of the written file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def convert(src: Path, out: Path | None, outtype: str, as_json: bool, quiet: bool) -> int:
    """Convert the HF checkpoint in SRC (config.json, *.safetensors, tokenizer) to GGUF.

    Supports LlamaForCausalLM (Llama 2/3/3.1/3.2, SmolLM2), MistralForCausalLM and Qwen2ForCausalLM.
    The file appears under its final name only when complete.
    """
    from ..gguf_info import read_gguf
    from ..quantize.convert import convert_checkpoint, resolve_outtype

    if not src.is_dir():
        raise EdgeError(f"not a checkpoint folder: {src}")
    if out is None:
        out = Path.cwd() / f"{src.resolve().name}-{resolve_outtype(src, outtype)}.gguf"
    path = convert_checkpoint(src, out, outtype=outtype, progress=not quiet and not as_json)
    info = read_gguf(path)
    summary = {
        "path": str(path),
        "arch": info.arch,
        "file_type": info.file_type,
        "n_params": info.n_params,
        "n_tensors": len(info.tensors),
        "n_vocab": info.n_vocab,
        "size": info.file_size,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"wrote {path} ({info.arch}, {info.file_type}, {info.n_params / 1e6:.1f}M params, {info.file_size / 2**20:.1f} MiB)")
    return 0
