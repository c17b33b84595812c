"""`edgellm convert`: a Hugging Face checkpoint folder -> one GGUF file; a PEFT LoRA adapter -> a GGUF adapter."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import EdgeError, UsageError

OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")
PROJECTOR_TYPE_HELP = ("For a vision checkpoint: tensor type of the projector (mmproj) GGUF written beside the model "
                       "[default: f16]; none converts the text model alone.")


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="GGUF file to write [default: ./<folder>-<outtype>.gguf; an adapter: ./<folder>.gguf].")
@click.option(
    "--outtype",
    type=click.Choice(OUTTYPES),
    default="auto",
    show_default=True,
    help="Tensor type of the weights; auto keeps the checkpoint's precision (bf16 stays bf16).",
)
@click.option("--base", help="For a LoRA adapter: the HF checkpoint folder (or hub repo id) it was trained on "
                             "[default: the folder its adapter_config.json names, if it is here].")
@click.option("--projector-type", type=click.Choice(("f16", "q8_0", "none")), default=None, help=PROJECTOR_TYPE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary of the written file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def convert(src: Path, out: Path | None, outtype: str, base: str | None, projector_type: str | None, as_json: bool,
            quiet: bool) -> int:
    """Convert the HF checkpoint in SRC (config.json, *.safetensors, tokenizer) to GGUF.

    Supports LlamaForCausalLM (Llama 2/3/3.1/3.2, SmolLM2), MistralForCausalLM, Qwen2ForCausalLM and the
    others the README lists. A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)
    becomes a GGUF LoRA adapter for `--lora` on run, chat, serve, bench and plan; --base names the checkpoint it was
    trained on (only its config.json is read). A vision checkpoint (Gemma 3, SmolVLM) also gets its projector,
    mmproj-<folder>-<TYPE>.gguf beside the model, as llama.cpp's converter writes it with --mmproj. Files appear
    under their final names only when complete.
    """
    from ..formats.gguf_info import read_gguf
    from ..quantize.peft import is_adapter_folder

    if not src.is_dir():
        raise EdgeError(f"not a checkpoint folder: {src}")
    projector = None
    if is_adapter_folder(src):
        if projector_type is not None:
            raise UsageError(f"--projector-type is for vision checkpoints, and {src} is a LoRA adapter")
        path = _convert_adapter(src, base, out, outtype)
    elif base is not None:
        raise UsageError(f"--base is for LoRA adapters, and {src} has no adapter_config.json")
    else:
        from ..quantize.checkpoint import read_config
        from ..quantize.convert import convert_checkpoint, resolve_outtype
        from ..quantize.projector import DEFAULT_PROJECTOR_TYPE, check_projector_type, prepare_projector, projector_file_name, write_projector

        resolved = resolve_outtype(src, outtype)  # the text model is checked first
        job = None
        if check_projector_type(read_config(src), projector_type) is not None:
            job = prepare_projector(src, projector_type or DEFAULT_PROJECTOR_TYPE)  # before anything is written
        if out is None:
            out = Path.cwd() / f"{src.resolve().name}-{resolved}.gguf"
        path = convert_checkpoint(src, out, outtype=outtype, progress=not quiet and not as_json)
        if job is not None:
            mm_path = path.parent / projector_file_name(src.resolve().name, job.ptype)
            projector = write_projector(job, mm_path, progress=not quiet and not as_json)
    info = read_gguf(path)
    summary = {
        "path": str(path),
        "arch": info.arch,
        "type": info.metadata.get("general.type", "model"),
        "file_type": info.file_type,
        "n_params": info.n_params,
        "n_tensors": len(info.tensors),
        "n_vocab": info.n_vocab,
        "size": info.file_size,
    }
    if projector is not None:
        mm = read_gguf(projector)
        summary["projector"] = {"path": str(projector), "file_type": mm.file_type, "size": mm.file_size}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        what = "LoRA adapter, " if summary["type"] == "adapter" else ""
        click.echo(f"wrote {path} ({what}{info.arch}, {info.file_type}, {info.n_params / 1e6:.1f}M params, {info.file_size / 2**20:.1f} MiB)")
        if projector is not None:
            click.echo(f"wrote {projector} (projector, {mm.file_type}, {mm.file_size / 2**20:.1f} MiB)")
    return 0


def _convert_adapter(src: Path, base: str | None, out: Path | None, outtype: str) -> Path:
    from ..quantize.checkpoint import read_config
    from ..quantize.lora import write_adapter_gguf
    from ..quantize.peft import open_adapter

    adapter = open_adapter(src)
    base_dir = _base_folder(base, adapter.base_name)
    if out is None:
        out = Path.cwd() / f"{adapter.name}.gguf"
    return write_adapter_gguf(adapter, read_config(base_dir), out, outtype)


def _base_folder(base: str | None, recorded: str | None) -> Path:
    """The base checkpoint's folder: --base (a folder, else a hub repo id pulled as `edgellm pull` does), or the
    folder the adapter's config names when it exists here."""
    if base is None:
        if recorded and Path(recorded).expanduser().is_dir():
            return Path(recorded).expanduser()
        named = f" (its adapter_config.json names {recorded}, which is not a folder here)" if recorded else ""
        raise UsageError(f"give --base: the checkpoint the adapter was trained on{named}")
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"--base {base} is not a Hugging Face checkpoint folder (no config.json)")
        return path
    from ..hub.download import parse_repo_id
    from ..hub.model import pull

    try:
        parse_repo_id(base)
    except UsageError:
        raise UsageError(f"--base {base}: no such folder, and not a hub repo id") from None
    folder = pull(base, say=lambda line: click.echo(line, err=True))
    if not (folder / "config.json").is_file():
        raise UsageError(f"--base {base} holds no Hugging Face checkpoint (no config.json), only GGUF files")
    return folder
