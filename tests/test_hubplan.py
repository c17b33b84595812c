"""Planning a hub repo before downloading it: GGUF headers and safetensors headers read by byte ranges from
the test hubs (tests/hubserver.py) through huggingface_hub's and modelscope_hub's own sessions, judged by the
planner; everything a hub sends checked before use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from gguf_edit import copy_gguf
from hubserver import Repo, Sparse
from hubtesting import (  # noqa: F401  (fixtures)
    LLAMA3_8B_LEVELS,
    MiB,
    caches,
    fake_hub,
    fake_modelscope,
    go_offline,
    gguf_repo,
    llama3_8b_repo,
    machine_with_ram,
    planned_levels_repo,
    sparse_gguf,
)

import fixtures
from conftest import run_cli
from edgellm.plan import hardware
from edgellm.hub import download as hub
from edgellm.store import store
from edgellm.errors import EdgeError, NotEnoughSpace
from edgellm.fsutil import human_bytes
from edgellm.formats.gguf_info import Truncated, read_gguf, read_gguf_prefix
from edgellm.hub.headers import MAX_GGUF_HEADER
from edgellm.hub.remote_plan import PlanOptions, plan_repo

GiB = 1 << 30
REPO = "bartowski/Llama-3-8B-Instruct-GGUF"


# ----------------------------------------------------------------------------------------- headers from bytes


def test_a_gguf_header_from_its_first_bytes_is_the_file_s_header():
    for path in (fixtures.smollm2_gguf(), fixtures.llamacpp_reference_gguf("llama3", fixtures.llama3_checkpoint(), "f16")):
        full, data = read_gguf(path), path.read_bytes()
        with pytest.raises(Truncated) as cut:
            read_gguf_prefix(data[: 1 << 20], path.name, len(data))
        assert cut.value.needed > 1 << 20  # it says how far it must read, at least
        head = read_gguf_prefix(data[: 8 << 20], path.name, len(data))
        assert (head.metadata, head.tensors, head.n_layers, head.file_size) == (full.metadata, full.tensors, full.n_layers, full.file_size)


def test_a_header_whose_tensors_lie_past_the_file_s_end_is_refused():
    data = fixtures.smollm2_gguf().read_bytes()[: 2 << 20]
    with pytest.raises(EdgeError, match=r"^corrupt GGUF header in x\.gguf: its tensors need 98,362,432 bytes, the file has 3,000,000$"):
        read_gguf_prefix(data, "x.gguf", 3_000_000)
    with pytest.raises(EdgeError, match=r"^not a GGUF file: x\.gguf$"):
        read_gguf_prefix(b"<html>" + data, "x.gguf", 10 << 20)


# --------------------------------------------------------------------------------------------- a GGUF repo


@pytest.mark.parametrize(
    "ram_gib, vram_gib, level, fit, headers",
    [
        (8, 0, "Q6_K", "cpu", 1),  # 7.1 GiB usable: Q8_0 (7.95 GiB) is larger, not read
        (16, 0, "Q8_0", "cpu", 1),  # floats are bases to quantize from: F16 is never chosen
        (6, 10, "Q8_0", "gpu", 1),  # VRAM counts where layers can go to a GPU of its own
        (6, 4, "Q6_K", "partial", 2),  # Q8_0 read, and judged too big for 5.2 GiB of RAM + 3.3 of VRAM
        (4.5, 0, "Q2_K", "cpu", 2),  # Q3_K_M read: too big at any context
    ],
)
def test_the_plan_reads_the_headers_of_the_levels_that_could_fit_and_no_more(fake_hub, ram_gib, vram_gib, level, fit,
                                                                              headers):  # fmt: skip
    """Quality first (--min-speed 0): the largest level that fits, and no header of a level larger than the
    memory usable here or smaller than the one chosen."""
    fake_hub.repos[REPO] = llama3_8b_repo()
    machine = hardware.synthetic(ram=int(ram_gib * GiB), vram=vram_gib * GiB)
    rp = plan_repo(hub.open_repo(REPO), machine, PlanOptions(min_speed=0))
    assert (rp.level, rp.plan.fit, rp.headers_read) == (level, fit, headers)
    reads = fake_hub.range_reads()
    read_files = {p for p, _ in reads}
    assert f"Llama-3-8B-Instruct-{level}.gguf" in read_files and fake_hub.downloads() == []
    sizes = {r.level: r.size for r in rp.rows}
    assert all(sizes[p.removeprefix("Llama-3-8B-Instruct-").removesuffix(".gguf")] >= sizes[level] for p in read_files)
    # A Llama 3 header is 7.5 MiB (its vocabulary): each level read costs at most twice that, in three requests.
    header = len(fake_hub.repos[REPO].files[f"Llama-3-8B-Instruct-{level}.gguf"].head)
    assert rp.fetched.bytes == sum(fake_hub.bytes_sent.values()) <= 2 * header * len(read_files)
    assert rp.fetched.requests == len(reads) <= 3 * len(read_files)
    assert rp.download == sizes[level] and rp.repo_size > 30 * GiB
    notes = {r.level: r.note for r in rp.rows}
    assert notes["F16"] == "a base to quantize from, not to run"
    assert all(notes[lv] == "smaller: not read" for lv in LLAMA3_8B_LEVELS[LLAMA3_8B_LEVELS.index(level) + 1 :])


@pytest.mark.parametrize("ram_gib, min_speed", [(8, None), (16, None), (64, None), (64, 5.0), (16, 1000.0)])
def test_with_a_speed_to_reach_the_plan_is_the_planner_s_over_every_level(fake_hub, ram_gib, min_speed):
    """The planner takes the highest-quality level that fits and decodes at --min-speed (else the fastest): read
    from the largest down, a level that is too slow is read past, and the choice is the one the planner makes
    with every level's header in hand."""
    from edgellm.store.models import ModelFile, ModelRef
    from edgellm.plan.planner import make_plan

    fake_hub.repos[REPO] = llama3_8b_repo()
    machine = hardware.synthetic(ram=ram_gib * GiB)
    rp = plan_repo(hub.open_repo(REPO), machine, PlanOptions(min_speed=min_speed, threads=4))
    every = [ModelFile(lv, Path(f"{lv}.gguf"), read_gguf_prefix(f.head, f"{lv}.gguf", f.size))
             for lv in LLAMA3_8B_LEVELS[1:] for f in [fake_hub.repos[REPO].files[f"Llama-3-8B-Instruct-{lv}.gguf"]]]  # fmt: skip
    every.sort(key=lambda f: f.info.bits_per_weight, reverse=True)
    expected = make_plan(ModelRef("x", Path("x"), tuple(every)), machine, min_speed=min_speed, threads=4)
    assert (rp.level, rp.plan.n_ctx) == (expected.level, expected.n_ctx)
    chosen = LLAMA3_8B_LEVELS.index(rp.level)
    read = {p.removeprefix("Llama-3-8B-Instruct-").removesuffix(".gguf") for p, _ in fake_hub.range_reads()}
    fast = expected.speed.decode_tps >= (10.0 if min_speed is None else min_speed)
    if fast:  # nothing smaller than the choice was read
        assert all(LLAMA3_8B_LEVELS.index(lv) <= chosen for lv in read)
        assert expected.why.startswith("the highest-quality level that fits and decodes at") and rp.plan.why == expected.why
    else:  # none is fast enough: every level that could fit was read, the fastest taken
        assert rp.level == "Q2_K" and "Q2_K" in read and rp.plan.why.startswith("the fastest level that fits")


def test_plan_hub_id_shows_the_choice_the_levels_and_the_cost(fake_hub, monkeypatch, capsys):
    fake_hub.repos[REPO] = llama3_8b_repo()
    machine_with_ram(monkeypatch, 8 * 1024)
    code, out, err = run_cli(capsys, "plan", REPO, "--ctx", "4096", "--min-speed", "0")
    assert code == 0, err
    text = " ".join(out.split())
    assert "Choice: Q6_K (Llama-3-8B-Instruct-Q6_K.gguf), the highest-quality level that fits; fits in RAM" in text
    assert "Context: 4096 tokens" in text and "Levels of bartowski/Llama-3-8B-Instruct-GGUF" in text
    q6 = fake_hub.repos[REPO].files["Llama-3-8B-Instruct-Q6_K.gguf"]
    assert f"On disk: {human_bytes(q6.size)} to download (Q6_K, 1 file)" in text
    assert f"Read to plan: {human_bytes(sum(fake_hub.bytes_sent.values()))} from Hugging Face in 3 request(s) (the headers of 1 level)" in text
    assert fake_hub.downloads() == []

    code, out, _ = run_cli(capsys, "plan", REPO, "--ram", "64G", "--vram", "0", "--min-speed", "0", "--json")
    result = json.loads(out)
    assert code == 0 and result["level"] == "Q8_0" and result["plan"]["n_ctx"] == 8192
    assert result["download_bytes"] == fake_hub.repos[REPO].files["Llama-3-8B-Instruct-Q8_0.gguf"].size
    assert {r["level"]: r["fit"] for r in result["levels"]}["Q8_0"] == "cpu" and result["read_bytes"] < 16 * MiB
    assert {r["level"]: r["note"] for r in result["levels"]}["Q6_K"] == "smaller: not read"
    code, out, _ = run_cli(capsys, "plan", REPO, "--ram", "8G", "--json")
    notes = {r["level"]: r["note"] for r in json.loads(out)["levels"]}
    assert notes["Q8_0"] == "larger than the 7.10 GiB of RAM usable here: not read" and notes["Q6_K"] == ""

    code, _, err = run_cli(capsys, "plan", REPO, "--ram", "2G")
    assert code == NotEnoughSpace.exit_code and err.strip().splitlines()[-1] == (
        f"edgellm: {REPO}: Llama-3-8B-Instruct does not fit this machine: its smallest level Q2_K is "
        f"{human_bytes(fake_hub.repos[REPO].files['Llama-3-8B-Instruct-Q2_K.gguf'].size)}, and there is 1.40 GiB of RAM usable here"
    )


def test_a_level_whose_header_cannot_be_trusted_is_not_chosen(fake_hub, tmp_path):
    """Headers from the hub are untrusted: a level whose header is not GGUF, lies about its tensors, holds a
    value no model has, or claims a header larger than any, is listed with why and passed over."""
    q41 = fixtures.smollm2_gguf()
    bad = copy_gguf(q41, tmp_path / "bad.gguf", {"llama.block_count": 0}, data=False)
    big = llama3_8b_repo().files["Llama-3-8B-Instruct-Q6_K.gguf"]
    levels = {
        "Q8_0": Sparse(b"<html>not found</html>", 150 * MiB),
        "Q6_K": Sparse(big.head, 120 * MiB),  # an 8B model's header, in a file far too short for its tensors
        "Q5_K_M": Sparse(sparse_gguf(bad).head, 110 * MiB),
        "Q5_0": Sparse(b"GGUF\x03\x00\x00\x00" + (1).to_bytes(8, "little") + (1).to_bytes(8, "little")
                       + (8).to_bytes(8, "little") + b"big.keys" + (8).to_bytes(4, "little")
                       + (MAX_GGUF_HEADER).to_bytes(8, "little"), 100 * MiB),  # a 64 MiB key string
        "Q4_1": q41.read_bytes(),
    }  # fmt: skip
    files = {f"SmolLM2-{lv}.gguf": data for lv, data in levels.items()}
    fake_hub.repos["someone/SmolLM2-GGUF"] = Repo(files)
    rp = plan_repo(hub.open_repo("someone/SmolLM2-GGUF"), hardware.synthetic(ram=64 * GiB))
    assert rp.level == "Q4_1"
    notes = {r.level: r.note for r in rp.rows}
    assert notes["Q8_0"] == "not chosen: not a GGUF file: SmolLM2-Q8_0.gguf"
    assert notes["Q6_K"].startswith("not chosen: corrupt GGUF header in SmolLM2-Q6_K.gguf: its tensors need ")
    assert notes["Q6_K"].endswith(f" bytes, the file has {120 * MiB:,}")
    assert notes["Q5_K_M"].startswith("not chosen: SmolLM2-Q5_K_M.gguf: impossible header value llama.block_count = 0")
    assert notes["Q5_0"] == "not chosen: SmolLM2-Q5_0.gguf has a GGUF header of more than 64 MiB: refused (none is that large)"
    assert sum(n for f, n in fake_hub.bytes_sent.items() if f.endswith("Q5_0.gguf")) <= 2 << 20  # nothing past the claim


def test_a_cdn_that_drops_range_is_read_only_as_far_as_the_header(fake_hub):
    """A CDN may answer a ranged GET with the whole file (200): the bytes before the range are skipped and the
    transfer stops where the header ends."""
    name = "SmolLM2-135M-Instruct-Q4_1.gguf"
    fake_hub.repos["someone/SmolLM2-GGUF"] = gguf_repo()
    fake_hub.ranges_ignored.add(name)
    fake_hub.throttle[name] = 20 * MiB  # written 2 MiB at a time: what is never read is never sent
    rp = plan_repo(hub.open_repo("someone/SmolLM2-GGUF"), hardware.synthetic(ram=8 * GiB))
    assert rp.level == "Q4_1" and rp.fetched.bytes <= 4 * MiB and rp.fetched.requests == 1
    assert fake_hub.bytes_sent[name] < fixtures.smollm2_gguf().stat().st_size // 2


def test_a_file_that_changed_since_it_was_listed_is_refused(fake_hub):
    from edgellm.hub.headers import level_header
    from edgellm.hub.ranges import HubReader

    fake_hub.repos[REPO] = llama3_8b_repo()
    remote = hub.open_repo(REPO)
    q6 = "Llama-3-8B-Instruct-Q6_K.gguf"
    old = fake_hub.repos[REPO].files[q6]
    fake_hub.repos[REPO].files[q6] = Sparse(old.head, old.size + 1)
    with pytest.raises(EdgeError) as caught:
        level_header(HubReader(remote), [next(f for f in remote.files if f.path == q6)])
    assert str(caught.value) == (
        f"{q6} in {REPO} on Hugging Face is {old.size + 1:,} bytes but the repo's listing says {old.size:,}: it "
        "changed meanwhile; try again"
    )


# ------------------------------------------------------------------------------------------ a checkpoint repo


def test_the_plan_of_a_checkpoint_reads_config_and_safetensors_headers_only(fake_hub, converted):
    """A Llama-3.2-shaped bf16 checkpoint: the converter's own output is described exactly (its base's size
    to within the header, estimated from tokenizer.json), each level estimated, the planner chooses."""
    source = fixtures.llama3_checkpoint()
    files = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    fake_hub.repos["meta-llama/Llama-3.2-tiny"] = Repo(files | {"original/consolidated.00.pth": b"pickle"})
    rp = plan_repo(hub.open_repo("meta-llama/Llama-3.2-tiny"), hardware.synthetic(ram=16 * GiB))
    assert rp.kind == "checkpoint" and rp.level == "Q8_0"
    read = {p for p, _ in fake_hub.range_reads()} | {p for p, _ in fake_hub.downloads()}
    assert read == {"config.json", "model.safetensors"} and fake_hub.bytes_sent["model.safetensors"] <= 256 << 10
    base = rp.rows[0]
    real = converted("llama3", "auto")
    assert base.level == "BF16" and base.note.startswith("the base the levels are made from")
    assert math.isclose(base.size, real.stat().st_size, rel_tol=0.05)  # the header's size estimated from tokenizer.json
    assert rp.download == sum(len(files[n]) for n in ("config.json", "generation_config.json", "model.safetensors",
                                                      "tokenizer.json", "tokenizer_config.json"))  # fmt: skip
    assert rp.keep == rp.chosen.size and rp.build == base.size + rp.keep and rp.chosen.estimated


def test_a_checkpoint_with_a_damaged_safetensors_header_is_refused_before_downloading(fake_hub, capsys):
    import struct

    files = {p.name: p.read_bytes() for p in fixtures.qwen2_checkpoint().iterdir() if p.is_file()}
    shard = next(n for n in files if n.endswith(".safetensors"))
    files[shard] = struct.pack("<Q", len(files[shard]) * 2) + files[shard][8:]  # a header longer than the file
    fake_hub.repos["Qwen/broken"] = Repo(files)
    code, _, err = run_cli(capsys, "plan", "Qwen/broken")
    assert code == 1 and err.strip().splitlines()[-1] == (
        f"edgellm: Qwen/broken on Hugging Face: corrupt or truncated safetensors file {shard}: header claims "
        f"{len(files[shard]) * 2} bytes"
    )
    assert fake_hub.downloads() == [] and all(n <= 2 << 20 for n in fake_hub.bytes_sent.values())


def test_a_config_that_does_not_match_its_tensors_is_refused_before_downloading(fake_hub, capsys):
    files = {p.name: p.read_bytes() for p in fixtures.qwen2_checkpoint().iterdir() if p.is_file()}
    config = json.loads(files["config.json"])
    fake_hub.repos["Qwen/huge"] = Repo(files | {"config.json": json.dumps(config | {"num_hidden_layers": 10**9}).encode()})
    code, _, err = run_cli(capsys, "run", "Qwen/huge", "-p", "hi")
    assert code == 1 and err.strip().splitlines()[-1].startswith(
        "edgellm: Qwen/huge on Hugging Face: checkpoint lacks tensor model.layers."
    )
    assert fake_hub.downloads() == [] and store.names() == []
    # A value llama.cpp would refuse in the GGUF the converter would write is refused from the plan already.
    fake_hub.repos["Qwen/long"] = Repo(files | {"config.json": json.dumps(config | {"max_position_embeddings": 2**40}).encode()})
    code, _, err = run_cli(capsys, "plan", "Qwen/long")
    assert code == 1 and "impossible header value qwen2.context_length = 1099511627776" in err.strip().splitlines()[-1]
    assert fake_hub.downloads() == []


# ------------------------------------------------------------------------------------- ModelScope, offline


def test_modelscope_headers_come_through_its_oss_redirect(fake_modelscope):
    fake_modelscope.repos["LLM-Research/SmolLM2-GGUF"] = planned_levels_repo()
    rp = plan_repo(hub.open_repo("LLM-Research/SmolLM2-GGUF"), hardware.synthetic(ram=64 * GiB))
    assert rp.hub == "modelscope" and rp.level == "Q8_0"
    assert {p for p, _ in fake_modelscope.range_reads()} == {"SmolLM2-135M-Instruct-Q8_0.gguf"}
    assert fake_modelscope.downloads() == [] and any(p.startswith("/storage/") for _, p, _ in fake_modelscope.log)


def test_offline_the_plan_reads_the_cached_files(fake_hub, monkeypatch, capsys):
    fake_hub.repos["someone/SmolLM2-GGUF"] = gguf_repo()
    assert run_cli(capsys, "pull", "someone/SmolLM2-GGUF", "--level", "Q4_1")[0] == 0
    go_offline(monkeypatch)
    fake_hub.forget()
    code, out, err = run_cli(capsys, "plan", "hf:someone/SmolLM2-GGUF")  # hf: names a hub: not the store entry
    text = " ".join(out.split())
    assert code == 0, err
    assert "Choice: Q4_1" in text and "from the cache in 0 request(s)" in text and "nothing to download" in text
    assert fake_hub.log == []


def test_estimated_sizes_follow_the_levels_bits_per_weight():
    """Estimates for the levels of SmolLM2 (a checkpoint here) against the files edgellm made of it."""
    from edgellm.quantize.checkpoint import open_checkpoint
    from edgellm.quantize.estimate import level_infos
    from edgellm.quantize.levels import parse_levels

    base, infos = level_infos(open_checkpoint(fixtures.smollm2_checkpoint()), "SmolLM2", parse_levels("Q8_0"), 2 * MiB)
    real = read_gguf(fixtures.smollm2_package() / "smollm2-hf-Q8_0.gguf")
    assert base == "F32" and math.isclose(infos["Q8_0"].tensor_bytes, real.tensor_bytes, rel_tol=0.01)
    f32 = read_gguf(fixtures.smollm2_converted_gguf("f32"))
    assert infos["F32"].tensors == f32.tensors  # the base, exactly as the converter writes it
    assert infos["Q8_0"].n_layers == real.n_layers and infos["Q8_0"].n_ctx_train == real.n_ctx_train
    assert Path(infos["Q8_0"].path).name == "SmolLM2-Q8_0.gguf"
