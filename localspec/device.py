"""What this machine offers: RAM, CUDA devices, Apple unified memory, and what llama.cpp can use.

Every source is optional. A probe on a machine with no GPU, no torch, no NVML and no nvidia-smi
still answers, and its notes say what was looked for and not found.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    kind: str  # "cuda" or "metal"
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class DeviceInfo:
    ram_total: int
    ram_available: int
    gpus: tuple[GpuDevice, ...]
    gpu_offload: bool  # the installed llama-cpp-python can offload layers to a GPU
    llama_backends: tuple[str, ...]  # e.g. ("CPU",), ("CUDA", "CPU")
    notes: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """Where layers would go: "cuda", "metal" or "cpu"."""
        if self.gpu_offload and self.gpus:
            return self.gpus[0].kind
        return "cpu"

    @property
    def gpu_free(self) -> int:
        return self.gpus[0].free_bytes if self.kind != "cpu" else 0

    def describe(self) -> list[str]:
        lines = [f"RAM: {self.ram_available / GiB:.1f} GiB available of {self.ram_total / GiB:.1f} GiB"]
        for gpu in self.gpus:
            lines.append(f"{gpu.kind.upper()} {gpu.index}: {gpu.name}, {gpu.free_bytes / GiB:.1f} GiB free "
                         f"of {gpu.total_bytes / GiB:.1f} GiB")
        if not self.gpus:
            lines.append("GPU: none found")
        offload = "yes" if self.gpu_offload else "no (CPU-only build)"
        lines.append(f"llama.cpp backends: {', '.join(self.llama_backends) or 'unknown'}; "
                     f"GPU offload: {offload}")
        lines.extend(self.notes)
        return lines

    def as_dict(self) -> dict:
        return {"ram_total": self.ram_total, "ram_available": self.ram_available,
                "gpus": [asdict(g) for g in self.gpus], "gpu_offload": self.gpu_offload,
                "llama_backends": list(self.llama_backends), "kind": self.kind, "notes": list(self.notes)}


def _ram() -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def _cuda_torch() -> list[GpuDevice] | None:
    try:
        import torch
    except Exception:  # absent or broken install: try the next source
        return None
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(GpuDevice(i, torch.cuda.get_device_name(i), "cuda", int(total), int(free)))
    return gpus


def _cuda_nvml() -> list[GpuDevice] | None:
    try:
        import pynvml
    except Exception:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(GpuDevice(i, name, "cuda", int(mem.total), int(mem.free)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> list[GpuDevice]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            gpus.append(GpuDevice(int(parts[0]), parts[1], "cuda", int(float(parts[2]) * MiB),
                                  int(float(parts[3]) * MiB)))
        except ValueError:
            continue
    return gpus


def _cuda_smi() -> list[GpuDevice] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else None


def _apple(ram_total: int, ram_available: int) -> list[GpuDevice]:
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return []
    working_set = None
    try:
        import torch

        working_set = int(torch.mps.recommended_max_memory())
    except Exception:  # torch absent or too old for the call
        pass
    if not working_set:
        # Metal's recommendedMaxWorkingSetSize is about three quarters of unified memory
        working_set = ram_total * 3 // 4
    return [GpuDevice(0, f"Apple {platform.machine()} (unified memory)", "metal", working_set,
                      min(working_set, ram_available))]


def _llama_build() -> tuple[bool, tuple[str, ...]]:
    """GPU offload support and backend names of the installed llama-cpp-python."""
    try:
        import llama_cpp as lc
    except Exception:
        return False, ()
    offload = bool(lc.llama_supports_gpu_offload())
    names: list[str] = []
    info = lc.llama_print_system_info().decode("utf-8", "replace")
    for part in info.split("|"):  # "CPU : SSE3 = 1 | ..." or "CUDA : ARCHS = ... | CPU : ..."
        if " : " in part:
            name = part.split(" : ")[0].strip()
            if name and name.isupper() and name not in names:
                names.append(name)
    libs = Path(lc.__file__).parent / "lib"
    for lib in sorted(libs.glob("libggml-*")) if libs.is_dir() else []:
        name = lib.name.split(".")[0].removeprefix("libggml-").upper()
        if name not in ("BASE", "CPU") and name not in names:
            names.append(name)
    return offload, tuple(names)


def probe() -> DeviceInfo:
    """Look at the machine now; never raises for a missing GPU or library."""
    ram_total, ram_available = _ram()
    notes: list[str] = []
    gpus: list[GpuDevice] = []
    for source, finder in (("torch", _cuda_torch), ("NVML", _cuda_nvml), ("nvidia-smi", _cuda_smi)):
        found = finder()
        if found is None:
            notes.append(f"CUDA: {source} not available")
            continue
        gpus = found
        notes.append(f"CUDA: {len(found)} device(s) via {source}")
        break
    gpus += _apple(ram_total, ram_available)
    offload, backends = _llama_build()
    if gpus and not offload:
        notes.append("a GPU is present but this llama-cpp-python build cannot offload to it")
    return DeviceInfo(ram_total, ram_available, tuple(gpus), offload, backends, tuple(notes))
