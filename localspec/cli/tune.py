"""`localspec tune`: measure this machine with a model, plan its memory, write a profile."""

from __future__ import annotations

import click

from localspec.cli.common import ModelOptions, model_options, note, resolve_model


def _profile_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from localspec.profiles import ProfileNameError, check_profile_name

    try:
        return check_profile_name(value)
    except ProfileNameError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command()
@model_options
@click.option("--name", default="tuned", show_default=True, callback=_profile_name,
              help="Profile name to write (use it later with --profile NAME).")
@click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens generated per prompt when measuring speed.")
def tune(opts: ModelOptions, name: str, max_tokens: int) -> None:
    """Measure memory, verify cost and drafter acceptance; write a tuned profile."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from localspec.device import probe
    from localspec.modelfile import read_model_file
    from localspec.planner import format_bytes, parse_budget
    from localspec.profiles import preset_names
    from localspec.settings import default_threads
    from localspec.tune import tune as run_tune

    if opts.backend != "llamacpp" or opts.device or opts.dtype:
        raise click.UsageError("tune measures the llama.cpp backend; with --backend torch, --budget "
                               "plans its memory directly")
    chosen_by_tune = {"--ctx": opts.n_ctx, "--batch": opts.n_batch, "--gpu-layers": opts.n_gpu_layers,
                      "--kv-type": opts.kv_type, "--flash-attn/--no-flash-attn": opts.flash_attn,
                      "--profile": opts.profile}
    given = [flag for flag, value in chosen_by_tune.items() if value is not None]
    if given:
        raise click.UsageError(f"tune plans {', '.join(given)} itself from what it measures; give it "
                               "only --budget, --threads and --model")
    choice = resolve_model(opts)
    read_model_file(choice.path)  # a missing or broken model fails here, as in other commands
    if choice.is_demo:
        note(choice.describe())
    if name in preset_names():
        note(f"{name!r} is a built-in preset: the tuned profile is laid over it (its settings win; "
             "pass another --name to keep the preset as shipped)")
    threads = opts.n_threads or default_threads()
    device = probe()
    budget = None
    if opts.budget:
        budget = parse_budget(opts.budget, device.gpu_free if device.kind != "cpu" else device.ram_available)
    console = Console(stderr=True)
    labels = {"calibrate": "memory calibration", "memory": "memory checks",
              "cost curve": "verify cost curve", "prime": "recycling matrix",
              "speed": "speed and acceptance"}
    columns = (TextColumn("{task.description:<22}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    bars = Progress(*columns, console=console, transient=False)
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if not tasks:  # started at the first stage, so an early error leaves no empty bar line
            bars.start()
        if stage not in tasks:
            tasks[stage] = bars.add_task(labels.get(stage, stage), total=total)
        bars.update(tasks[stage], completed=done, total=total)

    try:
        result = run_tune(choice.path, budget, threads, budget_text=opts.budget, name=name,
                          max_tokens=max_tokens, progress=progress, device=device)
    finally:
        if tasks:  # Progress.stop prints a newline off a terminal even if never started
            bars.stop()
    plan, s = result.plan, result.plan.settings
    click.echo(f"memory model: {', '.join(f'{c.label}: {c.error:+.1%}' for c in result.checks)} "
               "(predicted vs measured peak RSS)")
    click.echo(f"plan: ctx {s.n_ctx}, batch {s.n_batch}, kv {s.kv_type}, gpu layers {s.n_gpu_layers}, "
               f"tree {plan.tree_nodes} nodes / {s.max_tree_paths} paths, drafter {plan.drafter}; "
               f"{format_bytes(plan.memory.total)}"
               + (f" of {format_bytes(budget)}" if budget else ""))
    if plan.traded:
        click.echo(f"traded: {', '.join(plan.traded)}")
    if result.primed_tokens:
        click.echo(f"recycling matrix: primed {result.primed_tokens} tokens from the model "
                   "(restored by generate, serve and chat)")
    speeds = ", ".join(f"{d} {r.tokens_per_s:.1f} tok/s" for d, r in result.speeds.items())
    click.echo(f"speed: {speeds}")
    click.echo(f"measured speedup of {plan.drafter}: {result.speedup:.2f}x plain decoding")
    click.echo(f"profile written: {result.profile_path} (use --profile {name})")
