"""Hardware detection on this machine (psutil, NVML, the llama.cpp build) and the simulated machines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import llama_cpp
import psutil
import pytest

from edgellm.engine import llamacpp
from edgellm.cli import main
from edgellm.errors import UsageError
from edgellm.plan.hardware import detect, parse_size, synthetic


def test_detect_reports_this_machine():
    hw = detect()
    assert hw.ram_total == psutil.virtual_memory().total
    assert 0 < hw.ram_available <= hw.ram_total
    assert hw.cpu_cores == psutil.cpu_count(logical=False)
    assert hw.cpu_threads == psutil.cpu_count(logical=True)
    assert hw.llama.gpu_offload == bool(llama_cpp.llama_supports_gpu_offload())
    assert "CPU" in hw.llama.backends
    assert "CPU :" in hw.llama.system_info


def test_gpus_or_the_reason_there_are_none():
    hw = detect()
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        count = 0
    nvidia = [g for g in hw.gpus if g.vendor == "nvidia"]
    assert len(nvidia) == count
    if not hw.gpus:
        assert any("no NVIDIA GPU" in n for n in hw.notes)
        assert hw.vram_free == 0 and hw.offload_gpus == ()
    for g in hw.gpus:
        assert 0 < g.free <= g.total


def test_llama_cpp_devices_include_the_cpu():
    cpu = [d for d in llamacpp.devices() if d.kind == "cpu"]
    assert cpu and cpu[0].backend == "CPU" and cpu[0].total > 0


def test_overrides_make_a_simulated_machine():
    hw = detect().with_overrides(ram=16 << 30, vram=6 << 30)
    assert hw.simulated and hw.ram_available == 16 << 30
    assert hw.llama.gpu_offload and hw.vram_free == 6 << 30
    assert hw.notes == ()
    cpu_only = hw.with_overrides(vram=0)
    assert cpu_only.gpus == () and cpu_only.vram_free == 0
    assert synthetic(8 << 30).offload_gpus == ()


@pytest.mark.parametrize("text,value", [("16G", 16 << 30), ("6.5GiB", int(6.5 * (1 << 30))), ("512M", 512 << 20), ("1024", 1024), ("2t", 2 << 40)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "16 gigs", "-1G"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(UsageError, match="not a size"):
        parse_size(text)


def test_hw_command_json(capsys):
    assert main(["hw", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ram_total"] == psutil.virtual_memory().total
    assert out["cpu_cores"] >= 1 and isinstance(out["gpus"], list)
    assert "CPU" in out["llama"]["backends"]


def test_hw_command_table(capsys):
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    assert "RAM" in out and "CPU" in out and "GPU" in out and "llama.cpp" in out and "backends" in out


def test_one_ggml_in_the_process():
    # llama-cpp-python's wheel holds copies of libggml.so / .so.0: edgellm's own ggml calls must reach the copy
    # libllama uses, not load a second ggml with a registry of its own
    code = (
        "from edgellm.plan import hardware, placement\n"
        "hardware.detect()\n"
        "assert placement._cpu_buffer_type()\n"
        "print('\\n'.join(l.split()[-1] for l in open('/proc/self/maps') if 'libggml' in l))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names = {Path(p).name for p in out.split()}
    assert {"libggml.so.0", "libggml-base.so.0"} <= names
    assert not names & {"libggml.so", "libggml-base.so"}, names
