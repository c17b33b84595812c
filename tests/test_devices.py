"""Choosing GPUs by name (--device): a profile with those alone, a line for each name that is not here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgellm.errors import UsageError
from edgellm.plan.hardware import GPU, synthetic
from edgellm.commands.options import DEVICES


def two_gpus():
    hw = synthetic(16 << 30, vram=8 << 30)
    gpus = (GPU(0, "card A", "amd", 8 << 30, 8 << 30, "llama.cpp", backend="Vulkan", device="Vulkan0"),
            GPU(1, "card B", "nvidia", 24 << 30, 20 << 30, "llama.cpp", backend="Vulkan", device="Vulkan1"))
    return replace(hw, gpus=gpus)


def test_named_devices_alone_are_kept():
    hw, notes = two_gpus().only_devices(("Vulkan1",))
    assert [g.device for g in hw.offload_gpus] == ["Vulkan1"] and hw.vram_free == 20 << 30 and notes == []


def test_a_name_that_is_not_here_is_one_line_and_its_share_stays_on_the_cpu():
    hw, notes = two_gpus().only_devices(("Vulkan1", "CUDA0"))
    assert [g.device for g in hw.offload_gpus] == ["Vulkan1"]
    assert notes == ["--device CUDA0: there is no such device here (devices: Vulkan0, Vulkan1); its share runs on the CPU"]
    cpu, notes = two_gpus().only_devices(("CUDA0",))
    assert cpu.offload_gpus == () and not cpu.llama.gpu_offload and notes[0].endswith("running on the CPU")


def test_none_means_the_cpu_alone():
    assert DEVICES.convert("none", None, None) == ()
    hw, notes = two_gpus().only_devices(())
    assert hw.offload_gpus == () and notes == []


@pytest.mark.parametrize("bad", ["", "Vulkan0;rm", "../x", "a" * 80, ",".join(["CUDA0"] * 65)])
def test_device_names_are_checked(bad):
    with pytest.raises(UsageError, match="--device takes device names"):
        DEVICES.convert(bad, None, None)


def test_device_names_parse():
    assert DEVICES.convert("CUDA0, Vulkan1", None, None) == ("CUDA0", "Vulkan1")
