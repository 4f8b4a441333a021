"""What every model-loading command shares: options, settings resolution, opening an engine."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import click

from localspec.models import ModelChoice, choose_model
from localspec.settings import KV_CACHE_TYPES, MIN_CTX, BackendSettings, default_threads

if TYPE_CHECKING:
    from localspec.memory import TorchMemory
    from localspec.planner import Plan
    from localspec.profiles import Profile

DEFAULTS = BackendSettings(n_threads=1)
BACKENDS = ("llamacpp", "torch")
TORCH_DEVICES = ("cuda", "mps", "cpu")
TORCH_DTYPES = ("float32", "float16", "bfloat16")


def note(message: str) -> None:
    click.echo(f"localspec: {message}", err=True)


def _check_ctx(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value != 0 and value < MIN_CTX:
        raise click.BadParameter(f"{value} is too small: use at least {MIN_CTX} tokens, or 0 for the "
                                 "model's own context.", ctx, param)
    return value


def check_writable_folder(path: Path, option: str) -> None:
    """Refuse, before any slow work, an output path whose folder is a file or takes no new files
    (the folders still missing are made when writing, inside the nearest one that exists)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise click.BadParameter(f"{folder} is a file, not a folder", param_hint=option)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise click.BadParameter(f"cannot create files in {folder}: {exc.strerror or exc}",
                                 param_hint=option) from None


@dataclass(frozen=True)
class ModelOptions:
    """The model and backend flags as the user gave them (None = not given)."""

    model: str | None
    n_ctx: int | None
    n_batch: int | None
    n_threads: int | None
    n_gpu_layers: int | None
    kv_type: str | None
    flash_attn: bool | None
    budget: str | None = None
    profile: str | None = None
    backend: str = "llamacpp"
    device: str | None = None
    dtype: str | None = None

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.backend, self.device, self.dtype)


@dataclass(frozen=True)
class Runtime:
    """Which backend runs the model: llama.cpp (default) or plain PyTorch on a chosen device."""

    backend: str = "llamacpp"
    device: str | None = None  # torch only: cuda | mps | cpu (None = best available)
    dtype: str | None = None  # torch only: float32 | float16 | bfloat16 (None = by device)


@dataclass(frozen=True)
class ResolvedSettings:
    """Backend settings after flags, profile and (with a budget) the planner had their say."""

    settings: BackendSettings
    plan: Plan | None = None
    profile: Profile | None = None

    def speculation(self, drafter: str | None, draft_tokens: int | None,
                    default_tokens: int) -> tuple[str, int]:
        """Drafter and most draft tokens per step: the flags, else what the plan (or the profile)
        chose, else the defaults. A plan that gave up speculation (0 tree nodes) decodes plainly."""
        chosen = dict(self.profile.settings) if self.profile else {}
        if self.plan is not None:
            chosen |= {"drafter": self.plan.drafter, "tree_nodes": self.plan.tree_nodes}
        name = drafter or str(chosen.get("drafter", "auto"))
        if draft_tokens is None:
            draft_tokens = min(int(chosen.get("tree_nodes", default_tokens)), default_tokens)
        return name, draft_tokens


_OPTIONS = [
    click.option("--model", "-m", "model", envvar="LOCALSPEC_MODEL", type=click.Path(),
                 help="GGUF model file (default: the built-in demo model)."),
    click.option("--ctx", "n_ctx", type=int, default=None, callback=_check_ctx,
                 help=f"Context window in tokens, at least {MIN_CTX} (0 = the model's own; default "
                      f"{DEFAULTS.n_ctx})."),
    click.option("--batch", "n_batch", type=int, default=None,
                 help=f"Largest batch given to one decode call (default {DEFAULTS.n_batch})."),
    click.option("--threads", "n_threads", type=click.IntRange(min=1), default=None,
                 help="CPU threads (default: physical cores)."),
    click.option("--gpu-layers", "n_gpu_layers", type=int, default=None,
                 help="Layers to offload to the GPU (-1 = all; default 0, or what fits with --budget)."),
    click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default=None,
                 help=f"KV cache data type (default {DEFAULTS.kv_type})."),
    click.option("--flash-attn/--no-flash-attn", default=None,
                 help="Force flash attention on or off (default: off on a CPU alone, where it "
                      "slows verify batches as the context grows; llama.cpp decides with GPU "
                      "layers or a quantised KV cache)."),
    click.option("--budget", envvar="LOCALSPEC_BUDGET", default=None,
                 help="Memory budget, e.g. 6GiB, 512MiB or 50% (of free memory); settings are "
                      "planned to fit."),
    click.option("--profile", envvar="LOCALSPEC_PROFILE", default=None,
                 help="Settings profile: a preset (cpu-8gb, cuda-12gb, ...) or one `localspec tune` wrote."),
    click.option("--backend", type=click.Choice(BACKENDS), default="llamacpp", show_default=True,
                 help="llama.cpp, or plain PyTorch (needs the torch extra; adds layerskip and polybasic)."),
    click.option("--device", type=click.Choice(TORCH_DEVICES), default=None,
                 help="Torch backend device (default: cuda, then mps, then cpu)."),
    click.option("--dtype", type=click.Choice(TORCH_DTYPES), default=None,
                 help="Torch backend weights and cache type (default: float16 on GPU, bfloat16 or "
                      "float32 on CPU)."),
]


def model_options(command):
    """Add the shared model options to a command; they arrive packed as its first argument."""
    names = [f.name for f in fields(ModelOptions)]

    @functools.wraps(command)
    def wrapper(**kwargs):
        opts = ModelOptions(**{name: kwargs.pop(name) for name in names})
        check_backend_flags(opts)
        return command(opts, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def check_backend_flags(opts: ModelOptions) -> None:
    """Refuse flags the chosen backend would ignore: each backend takes its own."""
    if opts.backend == "torch":
        llama_only = {"--batch": opts.n_batch, "--gpu-layers": opts.n_gpu_layers, "--kv-type": opts.kv_type,
                      "--flash-attn/--no-flash-attn": opts.flash_attn}
        given = [flag for flag, value in llama_only.items() if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} set llama.cpp; the torch backend takes --device, "
                                   "--dtype, --ctx and --threads")
    elif opts.device or opts.dtype:
        raise click.UsageError("--device and --dtype choose for --backend torch; llama.cpp uses --gpu-layers")


def resolve_settings(opts: ModelOptions, model_path=None, measure: bool = True) -> ResolvedSettings:
    """The one place settings are decided: defaults < preset < tuned profile < flags, then the
    planner fits whatever was not given by a flag into the budget (if a budget was given).
    `measure=False` never loads the model (the memory scratch is then estimated if not cached)."""
    from localspec.profiles import layer_settings, load_profile

    profile = load_profile(opts.profile) if opts.profile else None
    flags = {f.name: getattr(opts, f.name) for f in fields(ModelOptions)
             if f.name not in ("model", "profile", "backend", "device", "dtype")}
    values, fixed = layer_settings(profile, flags)
    budget_text = values.get("budget")
    values["n_threads"] = values.get("n_threads") or default_threads()
    backend_values = {f.name: values[f.name] for f in fields(BackendSettings) if f.name in values}
    if budget_text is None:
        return ResolvedSettings(BackendSettings(**backend_values), None, profile)
    from localspec.device import probe
    from localspec.memory import ModelMemory, ScratchModel, cached_scratch, calibrate
    from localspec.planner import Planner, SpeedModel, parse_budget

    path = model_path or resolve_model(opts).path
    device = probe()
    available = device.gpu_free if device.kind != "cpu" else device.ram_available
    budget = parse_budget(budget_text, available)
    model = ModelMemory.from_gguf(path)
    torch = torch_memory(opts, path) if opts.backend == "torch" else None
    scratch = None if torch else cached_scratch(path, values["n_threads"])  # llama.cpp's, measured
    if scratch is None and torch is None and measure:
        note("measuring this model's working memory once (cached for next time)")
        scratch = calibrate(path, values["n_threads"])
    measured = profile.measured if profile else {}
    speed = SpeedModel(speedups=measured.get("speedups")) if measured.get("speedups") else SpeedModel()
    planner = Planner(model, device, scratch or ScratchModel.analytic(model), speed, values["n_threads"],
                      torch=torch)
    base = BackendSettings(**backend_values | {"n_ctx": values.get("n_ctx", 0)})
    plan = planner.plan(budget, base, tree_nodes=int(values.get("tree_nodes", 64)),
                        drafter=str(values.get("drafter", "auto")), fixed=fixed)
    return ResolvedSettings(plan.settings, plan, profile)


def torch_memory(opts: ModelOptions, model_path) -> TorchMemory:
    """How the torch backend will hold the model: in which dtype, and whether on a GPU."""
    try:
        from localspec.backends.torch_backend import TorchSettings
    except ImportError:
        raise click.UsageError("--backend torch needs PyTorch: pip install 'localspec[torch]'") from None
    from localspec.memory import TorchMemory

    settings = TorchSettings(device=opts.device, dtype=opts.dtype)
    return TorchMemory(dtype_bytes=settings.resolved_dtype().itemsize,
                       on_gpu=settings.resolved_device().startswith("cuda"),
                       file_bytes=Path(model_path).stat().st_size,
                       max_tree_nodes=settings.max_tree_nodes, scratch_slots=settings.scratch_slots)


def resolve_model(opts: ModelOptions) -> ModelChoice:
    return choose_model(opts.model)


def check_drafter(name: str, runtime: Runtime) -> None:
    """Reject an unknown drafter, or a torch-only one on llama.cpp, before loading anything."""
    from localspec.drafters import DRAFTERS, TORCH_DRAFTERS

    if name in TORCH_DRAFTERS:
        if runtime.backend != "torch":
            raise click.UsageError(f"the {name} drafter runs the model itself: add --backend torch")
    elif name not in DRAFTERS:
        raise click.UsageError(f"unknown drafter {name!r}; choose one of: {', '.join(DRAFTERS)}, or "
                               f"with --backend torch {', '.join(TORCH_DRAFTERS)}")


def open_engine(model_path, settings: BackendSettings, use_budget: bool = True,
                runtime: Runtime = Runtime()):
    """Load the backend and wrap it in an engine with the device-aware budget (if wanted)."""
    if runtime.backend == "torch":
        return _open_torch_engine(model_path, settings, use_budget, runtime)
    from localspec.backends.llamacpp import LlamaCppBackend
    from localspec.budget import SpeculationBudget, cached_cost_curve
    from localspec.engine import Engine
    from localspec.paths import cache_dir

    backend = LlamaCppBackend(model_path, settings)
    budget = None
    if use_budget and backend.supports_trees:
        if not (cache_dir() / "cost_curves.json").exists():
            note("measuring this machine's verify cost once (cached for next time)")
        curve = cached_cost_curve(backend, model_path, settings.speed_key, settings.n_threads)
        budget = SpeculationBudget(curve, max_nodes=min(64, backend.n_batch - 1))
    return backend, Engine(backend, budget=budget)


def _open_torch_engine(model_path, settings: BackendSettings, use_budget: bool, runtime: Runtime):
    try:
        from localspec.backends.torch_backend import TorchBackend, TorchSettings, cached_torch_cost_curve
        from localspec.drafters.polybasic import torch_drafter_factory
    except ImportError:
        raise click.UsageError("--backend torch needs PyTorch: pip install 'localspec[torch]'") from None
    from localspec.budget import SpeculationBudget
    from localspec.engine import Engine

    backend = TorchBackend(model_path, TorchSettings(device=runtime.device, dtype=runtime.dtype,
                                                     n_ctx=settings.n_ctx, n_threads=settings.n_threads))
    curve = None
    if use_budget:
        note(f"torch backend on {backend.device}, {backend.settings.resolved_dtype()}; "
             "verify cost measured once per model and device (cached)")
        curve = cached_torch_cost_curve(backend)
    engine = Engine(backend, budget=SpeculationBudget(curve) if curve else None,
                    new_drafter=torch_drafter_factory(backend, curve))
    return backend, engine
