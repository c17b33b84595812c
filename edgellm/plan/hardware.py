"""What this machine offers a model: RAM, CPU cores, GPUs and their memory, and what llama.cpp can use.

GPUs come from one place: the device list of the ggml that libllama loaded (LLAMA_CPP_LIB_PATH included):
each with its backend (CUDA, Vulkan, Metal, ROCm, SYCL), ggml's device name (CUDA0, Vulkan1) and the memory
its backend reports. An integrated GPU's memory is the system's: it is marked unified, never counted twice.
Where that build sees no GPU, NVML (nvidia-ml-py) still lists NVIDIA GPUs, to say why none is used.
"""

from __future__ import annotations

import platform
import re
import time
from dataclasses import asdict, dataclass, replace

import psutil

from ..fsutil import human_bytes

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'16G', '6.5GiB', '512M', '1073741824' -> bytes (binary units)."""
    m = _SIZE.match(str(text))
    if not m:
        from ..errors import UsageError

        raise UsageError(f"not a size: {text!r} (try 16G or 512M)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    vendor: str  # nvidia / apple / amd / other
    total: int  # bytes
    free: int  # bytes
    source: str  # "llama.cpp" (a ggml device), "nvml" (seen, not usable by this build) or "override"
    unified: bool = False  # memory shared with the CPU (Apple silicon, integrated GPUs)
    backend: str = ""  # ggml's backend: CUDA, Vulkan, Metal, ROCm, SYCL ("" where llama.cpp cannot use it)
    device: str = ""  # ggml's device name (CUDA0, Vulkan0), what llama.cpp's --device takes


@dataclass(frozen=True)
class LlamaBuild:
    gpu_offload: bool  # llama_supports_gpu_offload()
    backends: tuple[str, ...]  # ggml backends compiled in, e.g. ("CPU",) or ("CUDA", "CPU")
    system_info: str


@dataclass(frozen=True)
class HardwareProfile:
    ram_total: int
    ram_available: int
    cpu_cores: int
    cpu_threads: int
    cpu_name: str
    gpus: tuple[GPU, ...]
    llama: LlamaBuild
    notes: tuple[str, ...] = ()  # e.g. why no GPU is listed
    simulated: bool = False  # made from --ram/--vram overrides, not measured

    @property
    def offload_gpus(self) -> tuple[GPU, ...]:
        """GPUs llama.cpp can put layers on."""
        return tuple(g for g in self.gpus if g.source != "nvml") if self.llama.gpu_offload else ()

    @property
    def unified_memory(self) -> bool:
        """The GPU's memory is the machine's RAM (Apple silicon, integrated GPUs)."""
        return any(g.unified for g in self.offload_gpus)

    @property
    def vram_free(self) -> int:
        return sum(g.free for g in self.offload_gpus)

    def with_overrides(self, ram: int | None = None, vram: int | None = None) -> "HardwareProfile":
        """Simulate another machine: `ram` and `vram` are the memory a model may use there."""
        hw = self
        if ram is not None:
            hw = replace(hw, ram_total=ram, ram_available=ram, simulated=True)
        if vram is not None:
            gpus = (GPU(0, "simulated GPU", "other", vram, vram, "override"),) if vram > 0 else ()
            build = replace(hw.llama, gpu_offload=vram > 0)
            hw = replace(hw, gpus=gpus, llama=build, notes=(), simulated=True)
        return hw

    def only_devices(self, names: tuple[str, ...]) -> tuple["HardwareProfile", list[str]]:
        """This machine with the GPUs `names` alone (ggml device names; none: the CPU alone), and a line for each
        name that is not here: its layers stay on the CPU."""
        present = [g.device for g in self.offload_gpus if g.device]
        missing = [n for n in names if n not in present]
        notes = [f"--device {n}: there is no such device here (devices: {', '.join(present) or 'none'}); "
                 f"{'its share runs' if len(missing) < len(names) else 'running'} on the CPU" for n in missing]
        gpus = tuple(g for g in self.gpus if g.device in names)
        return replace(self, gpus=gpus, llama=replace(self.llama, gpu_offload=self.llama.gpu_offload and bool(gpus))), notes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vram_free"] = self.vram_free
        return d

    @property
    def machine_id(self) -> str:
        """What speed depends on and free memory does not change: CPU, cores, GPUs."""
        gpus = ", ".join(g.name for g in self.gpus)
        return f"{self.cpu_name}; {self.cpu_cores} cores; GPU: {gpus or 'none'}"

    def summary(self) -> str:
        gpus = ", ".join(f"{g.name} ({human_bytes(g.free)} free of {human_bytes(g.total)})" for g in self.gpus)
        return (
            f"RAM {human_bytes(self.ram_available)} available of {human_bytes(self.ram_total)}; "
            f"{self.cpu_cores} cores / {self.cpu_threads} threads; GPU: {gpus or 'none'}"
        )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvml_gpus() -> tuple[list[GPU], str | None]:
    """NVIDIA GPUs through NVML, or a note saying why there are none."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed: NVIDIA GPUs are not checked"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"no NVIDIA GPU: NVML is not available ({exc})"
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            gpus.append(GPU(i, name, "nvidia", int(mem.total), int(mem.free), "nvml"))
        return gpus, None if gpus else "no NVIDIA GPU: NVML found none"
    except pynvml.NVMLError as exc:
        return [], f"NVIDIA GPUs could not be read: {exc}"
    finally:
        pynvml.nvmlShutdown()


_VENDORS = (("metal", "apple"), ("apple", "apple"), ("amd", "amd"), ("radeon", "amd"), ("rocm", "amd"), ("hip", "amd"),
            ("nvidia", "nvidia"), ("cuda", "nvidia"))


def _vendor(*names: str) -> str:
    text = " ".join(names).lower()
    return next((v for key, v in _VENDORS if key in text), "other")


HOST_BACKENDS = ("CPU", "BLAS", "RPC")  # backends that are not a GPU's


def _ggml_gpus() -> list[GPU]:
    """The GPUs of the ggml that libllama loaded, as its backends report them."""
    from ..engine import llamacpp

    out = []
    for d in llamacpp.devices():
        if d.kind not in ("gpu", "igpu"):
            continue
        vendor = _vendor(d.name, d.description, d.backend)
        unified = vendor == "apple" or d.kind == "igpu"
        out.append(GPU(len(out), d.description or d.name, vendor, d.total, d.free, "llama.cpp", unified, d.backend, d.name))
    return out


def detect() -> HardwareProfile:
    from ..engine import llamacpp

    vm = psutil.virtual_memory()
    build = LlamaBuild(
        gpu_offload=llamacpp.supports_gpu_offload(),
        backends=tuple(llamacpp.backends()),
        system_info=llamacpp.system_info(),
    )
    gpus, notes = _ggml_gpus(), []
    idle = [b for b in build.backends if b not in HOST_BACKENDS]
    if idle and not gpus:
        notes.append(f"llama.cpp's {', '.join(idle)} backend found no GPU")
    if not gpus:
        gpus, note = _nvml_gpus()
        if note and not gpus:
            notes.append(note)
        if gpus:
            notes.append(
                f"this llama.cpp build ({', '.join(build.backends)}) cannot use these GPUs: reinstall llama-cpp-python "
                "with CMAKE_ARGS=-DGGML_CUDA=on (NVIDIA) or -DGGML_VULKAN=on, or point LLAMA_CPP_LIB_PATH at such a build"
            )
    return HardwareProfile(
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        cpu_cores=llamacpp.default_threads(),
        cpu_threads=psutil.cpu_count(logical=True) or 1,
        cpu_name=_cpu_name(),
        gpus=tuple(gpus),
        llama=build,
        notes=tuple(notes),
    )


def synthetic(ram: int, vram: int = 0, cores: int = 4) -> HardwareProfile:
    """A made-up machine (for planning what another machine would do, and for tests)."""
    build = LlamaBuild(gpu_offload=vram > 0, backends=("CUDA", "CPU") if vram else ("CPU",), system_info="")
    gpus = (GPU(0, "simulated GPU", "other", vram, vram, "override"),) if vram else ()
    return HardwareProfile(ram, ram, cores, cores * 2, "simulated CPU", gpus, build, simulated=True)


@dataclass(frozen=True)
class CpuLoad:
    """What other programs keep busy, measured over a short window, and the threads that leaves llama.cpp."""

    busy_cores: float  # other programs' CPU time over the window, in cores' worth
    threads: int


def _busy_and_total(t) -> tuple[float, float]:
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(getattr(t, f) for f in t._fields if f not in ("guest", "guest_nice"))  # guest time is in user
    return total - idle, total


def _cpu_snapshot() -> tuple[float, float, float]:
    """(this process's CPU seconds, the machine's busy CPU seconds, its total CPU seconds)."""
    import psutil

    return (sum(psutil.Process().cpu_times()[:2]), *_busy_and_total(psutil.cpu_times()))


def _load_between(before: tuple[float, float, float], after: tuple[float, float, float], cores: int) -> CpuLoad:
    import psutil

    n_cpus = psutil.cpu_count() or 1
    span = (after[2] - before[2]) / n_cpus  # seconds of wall time each CPU saw
    busy = max(0.0, (after[1] - before[1]) - (after[0] - before[0])) / span if span > 0 else 0.0
    return CpuLoad(busy, max(1, min(cores, n_cpus - round(busy))))


def cpu_load(cores: int, sample_s: float = 0.2) -> CpuLoad:
    """Threads for llama.cpp now: `cores` minus the cores other programs keep busy, at least one.

    llama.cpp's threads wait for each other at every step of a token, so a thread that shares its core with
    a busy program stalls all of them: on a laptop with a build or a browser running, fewer threads decode
    faster. This process's own CPU time over the window is not counted."""
    before = _cpu_snapshot()
    time.sleep(sample_s)
    return _load_between(before, _cpu_snapshot(), cores)


class LoadTracker:
    """The load other programs put on the CPU since the last look, without waiting: a chat or a server asks
    before each reply and every `RECHECK_S` while it writes one, and the time since the previous look is the
    window. A server or chat lives for hours: a busy moment at its start must not set its threads for life."""

    MIN_WINDOW_S = 0.2  # shorter windows say too little: keep the last answer
    RECHECK_S = 2.0  # while generating: look again this often (a look costs two /proc reads)

    def __init__(self, cores: int, threads: int):
        self.cores = cores
        self.last = threads
        self._snap, self._t = _cpu_snapshot(), time.monotonic()

    def due(self) -> bool:
        """Whether a look in the middle of work is worth its cost now."""
        return time.monotonic() - self._t >= self.RECHECK_S

    def threads(self) -> int:
        now = time.monotonic()
        if now - self._t >= self.MIN_WINDOW_S:
            snap = _cpu_snapshot()
            self.last = _load_between(self._snap, snap, self.cores).threads
            self._snap, self._t = snap, now
        return self.last
