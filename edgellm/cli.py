"""The `edgellm` command: a thin shell over the library.

Each subcommand lives in `edgellm/commands/<name>.py` and is imported only when used, so
`edgellm --help` stays fast and a command's heavy imports (llama.cpp, Textual) cost nothing elsewhere.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from . import __version__
from .errors import EdgeError

# command name -> (module under edgellm.commands, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "bench": ("bench", "bench", "Measure tokens/s and quality (perplexity, KL divergence) per quant level."),
    "chat": ("chat", "chat", "Chat with a local model in a terminal UI (default: the embedded SmolLM2)."),
    "convert": ("convert", "convert", "Convert a Hugging Face checkpoint folder (or a PEFT LoRA adapter) to one GGUF file."),
    "eval": ("eval", "eval_", "Task accuracy per quant level (HellaSwag, WinoGrande, multiple choice), as llama-perplexity scores it."),
    "hw": ("hw", "hw", "Show RAM, CPU, GPUs and what the installed llama.cpp can use."),
    "import": ("import_", "import_", "Put GGUF models from elsewhere (HF cache, LM Studio, Ollama) in the store, linked."),
    "inspect": ("inspect", "inspect", "Show a GGUF file's metadata and tensors."),
    "list": ("list", "list_", "List the packages in the local store: levels, sizes, which fits here."),
    "pull": ("pull", "pull", "Download a model from Hugging Face or ModelScope (only what edgellm needs)."),
    "package": ("package", "package", "Convert and quantize a checkpoint to several levels: GGUF files + manifest + card."),
    "plan": ("plan", "plan", "Pick the file, GPU layers and context a model gets here (or on a machine you describe)."),
    "push": ("push", "push", "Upload a package to the Hugging Face Hub."),
    "quantize": ("quantize", "quantize", "Quantize a float GGUF to one or more levels with llama.cpp's quantizer."),
    "rm": ("rm", "rm", "Remove packages from the local store."),
    "run": ("run", "run", "Answer one prompt with a model, streamed to stdout (stats on stderr)."),
    "serve": ("serve", "serve", "Serve a model over an OpenAI-compatible HTTP API (slots decoded together)."),
    "tune": ("tune", "tune", "Measure the threads and batch sizes that run a model fastest here, and keep them."),
    "verify": ("verify", "verify", "Re-hash a package's files and check them against its manifest."),
    "worker": ("worker", "worker", "Lend this machine's memory and CPU to another machine's --rpc (llama.cpp RPC server)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"edgellm.commands.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lines come from the table so listing commands imports none of them.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgellm")
@click.option("-v", "--verbose", is_flag=True, help="Stream llama.cpp's log to stderr as it is written (EDGELLM_LLAMA_LOG=1).")
def cli(verbose: bool) -> None:
    """edgellm: from a Hugging Face checkpoint to a fast, private chat on your laptop."""
    if verbose:
        os.environ["EDGELLM_LLAMA_LOG"] = "1"  # read by edgellm.engine.llamacpp when llama.cpp first logs
    _check_lib_path(os.environ.get("LLAMA_CPP_LIB_PATH"))


LIBLLAMA_NAMES = ("libllama.so", "libllama.dylib", "llama.dll", "libllama.dll")


def _check_lib_path(folder: str | None) -> None:
    """llama-cpp-python loads libllama from LLAMA_CPP_LIB_PATH when it is set: a folder without one would end
    the first command that needs llama.cpp in a traceback."""
    if folder is not None and not any(os.path.isfile(os.path.join(folder, n)) for n in LIBLLAMA_NAMES):
        raise EdgeError(f"LLAMA_CPP_LIB_PATH={folder} holds no llama.cpp library ({LIBLLAMA_NAMES[0]}): "
                        "point it at a build's bin folder, or unset it to use llama-cpp-python's own")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; expected failures print one line and exit non-zero, never a traceback."""
    from .interrupt import leave

    try:
        rv = cli.main(args=argv, prog_name="edgellm", standalone_mode=False)
    except EdgeError as exc:
        click.echo(f"edgellm: {exc}", err=True)
        return leave(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("edgellm: interrupted", err=True)
        return leave(130)
    except KeyboardInterrupt:
        click.echo("edgellm: interrupted", err=True)
        return leave(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # plain `edgellm`: the help, as click prints it
        exc.show()
        return exc.exit_code
    except click.UsageError as exc:  # one line, like every other usage error, with where to read more
        command = exc.ctx.command_path if exc.ctx else "edgellm"
        click.echo(f"edgellm: {exc.format_message()} (see '{command} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except BrokenPipeError:
        return 0
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
