"""Planner decisions under loose and tight budgets, on synthetic models and devices."""

from __future__ import annotations

from dataclasses import replace

import pytest

from localspec.device import DeviceInfo, GpuDevice
from localspec.memory import MiB, ModelMemory, ScratchModel, TorchMemory
from localspec.planner import GiB, MemoryBudgetError, Planner, parse_budget
from localspec.settings import BackendSettings

CPU = DeviceInfo(ram_total=64 * GiB, ram_available=48 * GiB, gpus=(), gpu_offload=False,
                 llama_backends=("CPU",))
SCRATCH = ScratchModel(runtime_bytes=60 * MiB, fixed_bytes=20 * MiB, per_batch_token=400_000.0)


def model(layer_mib: int = 100, n_layer: int = 16, vocab: int = 32000, ctx: int = 8192) -> ModelMemory:
    return ModelMemory(n_layer=n_layer, n_embd=2048, n_head=16, n_head_kv=4, head_dim_k=128, head_dim_v=128,
                       n_ff=8192, n_vocab=vocab, context_length=ctx, layer_bytes=(layer_mib * MiB,) * n_layer,
                       embd_bytes=60 * MiB, output_bytes=60 * MiB)


def base() -> BackendSettings:
    return BackendSettings(n_ctx=0, n_threads=1)


@pytest.mark.parametrize(("text", "expected"), [("6GiB", 6 * GiB), ("512MiB", 512 * MiB),
                                                ("2.5GB", 2_500_000_000), ("1000", 1000), ("50%", 24 * GiB),
                                                (" 1 gib ", GiB)])
def test_parse_budget(text, expected):
    assert parse_budget(text, 48 * GiB) == expected


@pytest.mark.parametrize("text", ["", "lots", "5XB", "-1GiB", "0", "150%", "0%"])
def test_bad_budget_strings_are_one_line_errors(text):
    with pytest.raises(MemoryBudgetError) as err:
        parse_budget(text, GiB)
    assert "\n" not in str(err.value)


def test_loose_budget_trades_nothing():
    plan = Planner(model(), CPU, SCRATCH).plan(None, base())
    assert plan.traded == ()
    s = plan.settings
    assert (s.n_ctx, s.n_batch, s.kv_type, plan.tree_nodes, plan.drafter) == (8192, 512, "f16", 64, "auto")
    assert plan.memory.host <= plan.host_limit


def test_tight_budget_gives_up_speculation_and_batch_before_kv_and_context():
    planner = Planner(model(), CPU, SCRATCH)
    loose = planner.plan(None, base())
    budget = loose.memory.total - 150 * MiB  # the scratch of a smaller batch is enough
    plan = planner.plan(budget, base())
    assert plan.memory.host <= plan.host_limit <= budget
    assert plan.traded and all(t.startswith(("tree", "drafter", "batch")) for t in plan.traded)
    assert plan.settings.n_ctx == 8192 and plan.settings.kv_type == "f16"
    assert plan.settings.n_batch < 512 and plan.settings.n_batch > plan.tree_nodes


def test_tighter_budget_quantises_kv_then_shortens_context():
    planner = Planner(model(), CPU, SCRATCH)
    minimal = planner.plan(None, BackendSettings(n_ctx=0, n_threads=1, n_batch=8), tree_nodes=0,
                           drafter="none")
    kv_f16 = 8192 * model().kv_bytes_per_token("f16")
    budget = (minimal.memory.total - kv_f16 // 3) * 32 // 31  # q8_0 KV fits, f16 does not (1/32 margin)
    plan = planner.plan(budget, base())
    assert plan.settings.kv_type == "q8_0" and plan.settings.n_ctx == 8192
    kinds = [t.split()[0] for t in plan.traded]
    assert kinds.index("kv") > max(i for i, k in enumerate(kinds) if k in ("tree", "drafter", "batch"))
    smaller = planner.plan(budget - kv_f16 // 2, base())
    assert smaller.settings.n_ctx < 8192 and smaller.settings.kv_type == "q4_0"
    assert smaller.memory.host <= smaller.host_limit


def test_flags_fix_settings_the_planner_may_not_trade():
    planner = Planner(model(), CPU, SCRATCH)
    loose = planner.plan(None, base())
    budget = loose.memory.total - 150 * MiB
    plan = planner.plan(budget, BackendSettings(n_ctx=0, n_threads=1, n_batch=512),
                        fixed=frozenset({"n_batch"}))
    assert plan.settings.n_batch == 512
    assert not any(t.startswith("batch") for t in plan.traded)
    assert any(t.startswith("context") or t.startswith("kv") for t in plan.traded)


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(MemoryBudgetError, match="does not fit in the budget of 1.00 GiB.*weights"):
        Planner(model(), CPU, SCRATCH).plan(GiB, base())
    with pytest.raises(MemoryBudgetError, match=r"and 0\.0 MiB is usable"):  # a budget below the margin
        Planner(model(), CPU, SCRATCH).plan(4 * MiB, base())


def test_gpu_gets_every_layer_that_fits_and_loses_layers_last():
    gpu = DeviceInfo(64 * GiB, 48 * GiB, (GpuDevice(0, "test", "cuda", 8 * GiB, 8 * GiB),), True,
                     ("CUDA", "CPU"))
    planner = Planner(model(layer_mib=100, n_layer=16), gpu, SCRATCH)
    plan = planner.plan(None, base())
    assert plan.settings.n_gpu_layers == 17 and plan.traded == ()  # 16 blocks + output layer
    small = DeviceInfo(64 * GiB, 48 * GiB, (GpuDevice(0, "test", "cuda", 2 * GiB, 2 * GiB),), True, ("CUDA",))
    tight = Planner(model(layer_mib=150, n_layer=16), small, SCRATCH).plan(None, base())
    assert 0 < tight.settings.n_gpu_layers < 17
    assert tight.memory.device <= tight.device_limit
    first_gpu = next(i for i, t in enumerate(tight.traded) if t.startswith("gpu"))
    assert all(t.startswith(("gpu",)) for t in tight.traded[first_gpu:])
    assert any(t.startswith("context") for t in tight.traded[:first_gpu])


def torch_model(ctx: int = 8192) -> ModelMemory:
    """1B parameters, in 2 GiB of q8_0: what the torch backend dequantises, not what llama.cpp maps."""
    return replace(model(ctx=ctx), n_params=1_000_000_000, largest_tensor=50_000_000)


def test_torch_plans_its_own_weights_and_trades_only_context():
    bf16 = TorchMemory(dtype_bytes=2, on_gpu=False, file_bytes=1100 * MiB)
    planner = Planner(torch_model(), CPU, SCRATCH, torch=bf16)
    loose = planner.plan(None, base())
    assert loose.traded == () and loose.settings.n_ctx == 8192
    assert loose.memory.weights_host == 2_000_000_000  # every parameter in bf16
    f32 = Planner(torch_model(), CPU, SCRATCH, torch=replace(bf16, dtype_bytes=4)).plan(None, base())
    assert f32.memory.weights_host == 2 * loose.memory.weights_host
    kv_per_slot = 16 * 4 * (128 + 128) * 2
    budget = loose.memory.total - 4096 * kv_per_slot  # half the cache's context must go
    plan = planner.plan(budget, base())
    assert plan.memory.host <= plan.host_limit <= budget
    assert plan.traded and all(t.startswith("context") for t in plan.traded)
    assert plan.settings.n_ctx < 8192 and plan.drafter == "auto" and plan.tree_nodes == 64


def test_torch_on_a_gpu_plans_the_device_and_says_when_the_weights_cannot_fit():
    gpu = DeviceInfo(ram_total=64 * GiB, ram_available=48 * GiB, gpu_offload=True, llama_backends=("CUDA",),
                     gpus=(GpuDevice(index=0, name="test", kind="cuda", total_bytes=8 * GiB,
                                     free_bytes=8 * GiB),))
    planner = Planner(torch_model(), gpu, SCRATCH, torch=TorchMemory(dtype_bytes=2, on_gpu=True,
                                                                      file_bytes=1100 * MiB))
    plan = planner.plan(None, base())
    assert plan.memory.weights_device == 2_000_000_000 and plan.memory.weights_host == 0
    assert plan.memory.kv_device > 0 and plan.memory.kv_host == 0
    with pytest.raises(MemoryBudgetError) as err:
        planner.plan(GiB, base())  # 2 GB of weights in 1 GiB
    assert "torch backend" in str(err.value) and "\n" not in str(err.value)
