"""The device probe answers on a machine without any GPU, and says what it looked for."""

from __future__ import annotations

from localspec import device


def test_probe_without_any_gpu_says_what_it_found(monkeypatch):
    for finder in ("_cuda_torch", "_cuda_nvml", "_cuda_smi"):
        monkeypatch.setattr(device, finder, lambda: None)
    monkeypatch.setattr(device, "_apple", lambda total, available: [])
    info = device.probe()
    assert info.gpus == () and info.kind == "cpu" and info.gpu_free == 0
    assert 0 < info.ram_available <= info.ram_total
    text = "\n".join(info.describe())
    assert "GPU: none found" in text
    assert "torch not available" in text and "nvidia-smi not available" in text
    assert "CPU" in info.llama_backends


def test_real_probe_on_this_machine_is_consistent():
    info = device.probe()
    assert info.ram_total > 0
    assert info.kind in ("cpu", "cuda", "metal")
    assert info.kind == "cpu" or info.gpu_offload


def test_nvidia_smi_rows_are_parsed_in_mib():
    gpus = device.parse_nvidia_smi("0, NVIDIA GeForce RTX 4090, 24564, 23000\nbad line\n")
    assert len(gpus) == 1
    assert gpus[0].name == "NVIDIA GeForce RTX 4090"
    assert gpus[0].total_bytes == 24564 << 20 and gpus[0].free_bytes == 23000 << 20


def test_a_gpu_is_used_only_when_llama_cpp_can_offload():
    gpu = device.GpuDevice(0, "test", "cuda", 8 << 30, 7 << 30)
    assert device.DeviceInfo(1, 1, (gpu,), False, ("CPU",)).kind == "cpu"
    assert device.DeviceInfo(1, 1, (gpu,), True, ("CUDA", "CPU")).kind == "cuda"
