"""`localspec info`: describe a model file without loading its weights, and (--plan) the memory plan."""

from __future__ import annotations

import json

import click

from localspec.cli.common import ModelOptions, model_options, resolve_model, resolve_settings


def _model_fields(choice) -> dict:
    from localspec.modelfile import read_model_file

    meta = read_model_file(choice.path)
    return {
        "model": choice.describe(),
        "name": meta.name,
        "architecture": meta.architecture,
        "parameters": meta.n_params,
        "layers": meta.n_layer,
        "heads": meta.n_head,
        "kv_heads": meta.n_head_kv,
        "embedding": meta.n_embd,
        "context_length": meta.context_length,
        "vocab_size": meta.vocab_size,
        "vocab_type": f"{meta.tokenizer_model} (pre: {meta.tokenizer_pre})",
        "file_size_bytes": meta.file_size,
        "quantisation": meta.file_type,
        "tensor_types": meta.tensor_types,
        "chat_template": meta.chat_template is not None,
    }


def _print_fields(fields: dict) -> None:
    for key, value in fields.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e6:.1f}M)"
        elif key == "file_size_bytes":
            key, value = "file_size", f"{value / 2**20:.1f} MiB"
        elif key == "tensor_types":
            value = ", ".join(f"{k} x{v}" for k, v in value.items())
        elif key == "chat_template":
            value = "yes" if value else "no (ChatML is used)"
        click.echo(f"{key:>16}: {value}")


def _plan(opts: ModelOptions, path) -> dict:
    """The plan for these options, with no budget meaning 'what is free now'."""
    from dataclasses import replace

    from localspec.device import probe

    resolved = resolve_settings(opts if (opts.budget or opts.profile) else replace(opts, budget="100%"),
                                path, measure=False)
    plan = resolved.plan
    if plan is None:  # a profile without a budget: its settings as they are
        resolved = resolve_settings(replace(opts, budget="100%"), path, measure=False)
        plan = resolved.plan
    return {"device": probe().describe(), "plan": plan.as_dict()}


def _print_plan(data: dict) -> None:
    from localspec.planner import format_bytes

    plan = data["plan"]
    for line in data["device"]:
        click.echo(f"{'device':>16}: {line}")
    budget = format_bytes(plan["budget"]) if plan["budget"] is not None else "none"
    click.echo(f"{'budget':>16}: {budget} (usable: host {format_bytes(plan['host_limit'])}, "
               f"device {format_bytes(plan['device_limit'])})")
    torch = plan["backend"] == "torch"  # it takes the context alone from the plan
    keys = ("backend", "n_ctx") if torch else (
        "n_ctx", "n_batch", "n_gpu_layers", "kv_type", "max_tree_paths", "tree_nodes", "drafter")
    for key in keys:
        click.echo(f"{key:>16}: {plan[key]}")
    mem = plan["memory"]
    rows = (("runtime", "runtime", None), ("weights", "weights_host", "weights_device"),
            ("kv cache", "kv_host", "kv_device"), ("logits", "logits", None),
            ("compute", "compute_host", "compute_device"), ("drafter", "drafter", None))
    for label, host, device in rows:
        dev = f", device {format_bytes(mem[device])}" if device and mem[device] else ""
        click.echo(f"{label:>16}: host {format_bytes(mem[host])}{dev}")
    click.echo(f"{'total':>16}: {format_bytes(mem['total'])} (host {format_bytes(mem['host'])}, "
               f"device {format_bytes(mem['device'])})")
    click.echo(f"{'traded':>16}: {', '.join(plan['traded']) or 'nothing'}")
    if not torch:  # the speed model is llama.cpp's
        click.echo(f"{'expected speed':>16}: {plan['expected_speedup']:.2f}x plain decoding")


@click.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--plan", "show_plan", is_flag=True,
              help="Also print the memory plan for --budget (default: free memory), loading nothing.")
def info(opts: ModelOptions, as_json, show_plan) -> None:
    """Describe a model file without loading its weights."""
    choice = resolve_model(opts)
    fields = _model_fields(choice)
    plan = _plan(opts, choice.path) if show_plan else None
    if as_json:
        click.echo(json.dumps(fields | ({"plan": plan["plan"], "device": plan["device"]} if plan else {})))
        return
    _print_fields(fields)
    if plan:
        click.echo("")
        _print_plan(plan)
