"""What every model-loading command shares: options, settings resolution, opening an engine."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import click

from localspec.models import ModelChoice, choose_model
from localspec.settings import KV_CACHE_TYPES, BackendSettings, default_threads


def note(message: str) -> None:
    click.echo(f"localspec: {message}", err=True)


@dataclass(frozen=True)
class ModelOptions:
    """The model and backend flags as the user gave them (None = not given)."""

    model: str | None
    n_ctx: int
    n_batch: int
    n_threads: int | None
    n_gpu_layers: int
    kv_type: str
    flash_attn: bool | None


_OPTIONS = [
    click.option("--model", "-m", "model", envvar="LOCALSPEC_MODEL", type=click.Path(),
                 help="GGUF model file (default: the built-in demo model)."),
    click.option("--ctx", "n_ctx", type=int, default=4096, show_default=True,
                 help="Context window in tokens (0 = the model's own)."),
    click.option("--batch", "n_batch", type=int, default=512, show_default=True,
                 help="Largest batch given to one decode call."),
    click.option("--threads", "n_threads", type=int, default=None,
                 help="CPU threads (default: physical cores)."),
    click.option("--gpu-layers", "n_gpu_layers", type=int, default=0, show_default=True,
                 help="Layers to offload to the GPU (-1 = all)."),
    click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default="f16",
                 show_default=True, help="KV cache data type."),
    click.option("--flash-attn/--no-flash-attn", default=None,
                 help="Force flash attention on or off (default: llama.cpp decides)."),
]


def model_options(command):
    """Add the shared model options to a command; they arrive packed as its first argument."""
    names = [f.name for f in fields(ModelOptions)]

    @functools.wraps(command)
    def wrapper(**kwargs):
        opts = ModelOptions(**{name: kwargs.pop(name) for name in names})
        return command(opts, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def backend_settings(opts: ModelOptions) -> BackendSettings:
    return BackendSettings(n_ctx=opts.n_ctx, n_batch=opts.n_batch,
                           n_threads=opts.n_threads or default_threads(),
                           n_gpu_layers=opts.n_gpu_layers, kv_type=opts.kv_type,
                           flash_attn=opts.flash_attn)


def resolve_model(opts: ModelOptions) -> ModelChoice:
    return choose_model(opts.model)


def open_engine(model_path, settings: BackendSettings, use_budget: bool = True):
    """Load the backend and wrap it in an engine with the device-aware budget (if wanted)."""
    from localspec.backends.llamacpp import LlamaCppBackend
    from localspec.budget import SpeculationBudget, cached_cost_curve
    from localspec.engine import Engine
    from localspec.paths import cache_dir

    backend = LlamaCppBackend(model_path, settings)
    budget = None
    if use_budget and backend.supports_trees:
        device = f"gpu{settings.n_gpu_layers}" if settings.n_gpu_layers else "cpu"
        if not (cache_dir() / "cost_curves.json").exists():
            note("measuring this machine's verify cost once (cached for next time)")
        curve = cached_cost_curve(backend, model_path, device, settings.n_threads)
        budget = SpeculationBudget(curve)
    return backend, Engine(backend, budget=budget)
