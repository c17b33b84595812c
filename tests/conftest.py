import sys
from pathlib import Path

import pytest

# Let tests import the shared fixture builders as `fixtures`.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Nothing a test does may write to the real user data folders. The folder does not exist yet, as on a new
    machine: whatever edgellm needs there, it must create itself."""
    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path_factory.mktemp("home") / "edgellm"))


# Modules whose tests load real models through llama.cpp or torch, run servers, or drive a terminal: the whole
# suite runs them (CI does); `pytest -m "not slow"` leaves them out for a quick edit loop.
SLOW_MODULES = {
    "test_archs", "test_bench", "test_chat_formats", "test_eval", "test_convert", "test_convert_errors", "test_faults", "test_first_run", "test_hub",
    "test_hubplan", "test_hubrun", "test_hubserver", "test_levels", "test_memory", "test_onepass", "test_package", "test_push", "test_quality", "test_run_cli",
    "test_runtime", "test_serve", "test_serve_ollama", "test_serve_anthropic", "test_serve_tools", "test_tui", "test_tui_tmux", "test_vocab_json", "test_windows_experts",
    "test_eval_exam", "test_eval_hub", "test_serve_embed", "test_serve_rerank", "test_serve_reasoning", "test_serve_responses", "test_serve_store", "test_speculate",
    "test_split", "test_run_thinking", "test_tui_thinking", "test_vision", "test_vision_convert", "test_serve_images", "test_tui_images",
}


def pytest_terminal_summary(terminalreporter):
    """The test data cache's size after the run, once entries no run has used for a month are gone."""
    import fixtures
    from edgellm.fsutil import human_bytes

    size, removed = fixtures.prune_cache()
    gone = f"; removed as unused: {', '.join(removed)}" if removed else ""
    terminalreporter.write_line(f"edgellm test data cache: {human_bytes(size)} in {fixtures.cache_root()}{gone}")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


# --- converted checkpoints, shared by the converter's tests ----------------------------------------------


def _checkpoints() -> dict:
    """Every checkpoint the converter tests use, by name."""
    import arch_fixtures
    import fixtures

    return {**fixtures.CHECKPOINTS, **arch_fixtures.CHECKPOINTS}


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """converted(name, outtype) -> the checkpoint `name` converted by edgellm, once per session."""
    from edgellm.quantize.convert import convert_checkpoint

    done: dict[tuple[str, str], Path] = {}
    folder = tmp_path_factory.mktemp("converted")

    def get(name: str, outtype: str = "f32") -> Path:
        if (name, outtype) not in done:
            done[name, outtype] = convert_checkpoint(_checkpoints()[name](), folder / f"{name}-{outtype}.gguf", outtype, progress=False)
        return done[name, outtype]

    return get


@pytest.fixture(scope="session")
def hf_tokenizer():
    """hf_tokenizer(name) -> transformers' tokenizer of the checkpoint `name`."""
    from transformers import AutoTokenizer

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = AutoTokenizer.from_pretrained(_checkpoints()[name]())
        return cache[name]

    return get


def llama(path: Path, **kw):
    """llama-cpp-python's Llama over `path`, quietly, for token and logit comparisons."""
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, n_threads=2, verbose=False, **kw)


# --- the CLI in this process --------------------------------------------------------------------------


def run_cli(capsys, *argv):
    """`edgellm ARGV` run in this process: (exit code, stdout, stderr)."""
    from edgellm.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def gguf_copy(tmp_path_factory):
    """One copy of the real SmolLM2 GGUF on the tmp file system, to hard-link into a test's store or layout."""
    import shutil

    import fixtures

    path = tmp_path_factory.mktemp("gguf") / "source.gguf"
    shutil.copyfile(fixtures.smollm2_gguf(), path)
    return path
