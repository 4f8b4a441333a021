"""The `localspec` command line. Settings are built here and handed to the engine."""

from __future__ import annotations

import json
import os
import sys

import click

from localspec.errors import LocalspecError
from localspec.models import choose_model
from localspec.settings import (
    KV_CACHE_TYPES,
    BackendSettings,
    GenerationSettings,
    SamplingSettings,
    default_threads,
)


def _note(message: str) -> None:
    click.echo(f"localspec: {message}", err=True)


def backend_options(command):
    """Options shared by every command that loads a model."""
    options = [
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
    for option in reversed(options):
        command = option(command)
    return command


def make_backend_settings(n_ctx: int, n_batch: int, n_threads: int | None, n_gpu_layers: int,
                          kv_type: str, flash_attn: bool | None) -> BackendSettings:
    return BackendSettings(n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads or default_threads(),
                           n_gpu_layers=n_gpu_layers, kv_type=kv_type, flash_attn=flash_attn)


def open_engine(model_path, backend_settings: BackendSettings, use_budget: bool):
    """Load the backend and wrap it in an engine with the device-aware budget (if wanted)."""
    from localspec.backends.llamacpp import LlamaCppBackend
    from localspec.budget import SpeculationBudget, cache_dir, cached_cost_curve
    from localspec.engine import Engine

    backend = LlamaCppBackend(model_path, backend_settings)
    budget = None
    if use_budget and backend.supports_trees:
        device = f"gpu{backend_settings.n_gpu_layers}" if backend_settings.n_gpu_layers else "cpu"
        if not (cache_dir() / "cost_curves.json").exists():
            _note("measuring this machine's verify cost once (cached for next time)")
        curve = cached_cost_curve(backend, model_path, device, backend_settings.n_threads)
        budget = SpeculationBudget(curve)
    return backend, Engine(backend, budget=budget)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="localspec")
def cli() -> None:
    """localspec: fast local LLM decoding with lossless speculative decoding."""


@cli.command()
@backend_options
@click.option("--prompt", "-p", required=True, help="Prompt text ('-' reads standard input).")
@click.option("--chat", is_flag=True, help="Send the prompt as a user message with the chat template.")
@click.option("--system", default=None, help="System message (with --chat).")
@click.option("--max-tokens", "-n", type=int, default=256, show_default=True)
@click.option("--temperature", "-t", type=float, default=0.0, show_default=True,
              help="0 = greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=0, show_default=True, help="0 = off.")
@click.option("--min-p", type=float, default=0.0, show_default=True)
@click.option("--repeat-penalty", type=float, default=1.0, show_default=True)
@click.option("--presence-penalty", type=float, default=0.0, show_default=True)
@click.option("--frequency-penalty", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); never printed.")
@click.option("--drafter", "-d", default="auto", show_default=True,
              help="Draft method: auto, recycling, retrieval, lookup, or none (plain decoding).")
@click.option("--draft-tokens", type=int, default=8, show_default=True,
              help="Most draft tokens verified per step.")
@click.option("--fixed-draft", is_flag=True,
              help="Verify every drafted token instead of letting the cost model pick the tree size.")
@click.option("--stats", is_flag=True, help="Print one JSON line of speed statistics to stderr.")
def generate(model, n_ctx, n_batch, n_threads, n_gpu_layers, kv_type, flash_attn, prompt, chat,
             system, max_tokens, temperature, top_p, top_k, min_p, repeat_penalty,
             presence_penalty, frequency_penalty, seed, stop, drafter, draft_tokens, fixed_draft,
             stats) -> None:
    """Generate text from a prompt, streamed to standard output."""
    from localspec.chat import Message, encode_chat
    from localspec.drafters import make_drafter
    from localspec.generate import stream_generate

    sampling = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty, seed=seed)
    settings = GenerationSettings(max_tokens=max_tokens, stop=tuple(stop), drafter=drafter,
                                  max_draft_tokens=draft_tokens, sampling=sampling)
    backend_settings = make_backend_settings(n_ctx, n_batch, n_threads, n_gpu_layers, kv_type,
                                             flash_attn)
    make_drafter(drafter)  # reject an unknown name before loading anything
    if prompt == "-":
        prompt = sys.stdin.read()
    choice = choose_model(model)
    if choice.is_demo:
        _note(choice.describe())
    backend, engine = open_engine(choice.path, backend_settings, use_budget=not fixed_draft)
    with backend:
        if not backend.supports_trees and drafter != "none":
            _note("this model's cache cannot drop rejected drafts; using plain decoding")
        if chat:
            messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
            tokens = encode_chat(backend, messages)
        else:
            tokens = backend.tokenize(prompt, add_special=True)
        chunk = None
        for chunk in stream_generate(engine, tokens, settings):
            if chunk.text:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        sys.stdout.write("\n")
        if chunk is not None and chunk.finish_reason == "context":
            _note(f"stopped: the context window ({backend.n_ctx} tokens) is full")
        if stats and chunk is not None:
            click.echo(json.dumps(chunk.stats.as_dict()), err=True)


@cli.command()
@click.option("--model", "-m", "model", envvar="LOCALSPEC_MODEL", type=click.Path(),
              help="GGUF model file (default: the built-in demo model).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(model, as_json) -> None:
    """Describe a model file without loading its weights."""
    from localspec.modelfile import read_model_file

    choice = choose_model(model)
    meta = read_model_file(choice.path)
    fields = {
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
    if as_json:
        click.echo(json.dumps(fields))
        return
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


@cli.command()
@backend_options
@click.option("--prompts", "prompts_path", required=True, type=click.Path(),
              help="JSONL prompt set: {id, category, prompt} or {id, category, messages}.")
@click.option("--methods", default="none,lookup,recycling,retrieval,auto,peer-pld,peer-ar",
              show_default=True, help="Comma-separated methods: drafters, peer-pld, peer-ar.")
@click.option("--max-tokens", "-n", type=int, default=128, show_default=True)
@click.option("--temperature", "-t", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--repeats", type=int, default=1, show_default=True)
@click.option("--draft-tokens", type=int, default=16, show_default=True,
              help="Most draft tokens a drafter may propose per step.")
@click.option("--fixed-draft", is_flag=True, help="Verify every drafted token (no cost model).")
@click.option("--pld-tokens", type=int, default=10, show_default=True,
              help="num_pred_tokens for llama-cpp-python's prompt lookup (peer-pld).")
@click.option("--limit", type=int, default=None, help="Use only the first N prompts.")
@click.option("--json", "json_path", required=True, type=click.Path(), help="Where to write results.")
def bench(model, n_ctx, n_batch, n_threads, n_gpu_layers, kv_type, flash_attn, prompts_path, methods,
          max_tokens, temperature, seed, repeats, draft_tokens, fixed_draft, pld_tokens, limit,
          json_path) -> None:
    """Measure methods against plain decoding and llama-cpp-python on a prompt set."""
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from localspec import bench as b
    from localspec.drafters import DRAFTERS

    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in DRAFTERS and m not in b.PEER_METHODS]
    if unknown:
        raise click.UsageError(f"unknown method(s) {', '.join(unknown)}; choose from "
                               f"{', '.join([*DRAFTERS, *b.PEER_METHODS])}")
    if repeats < 1:
        raise click.UsageError("--repeats must be >= 1")
    if "none" not in names:
        names.insert(0, "none")  # every speedup is measured against plain decoding
    prompts = b.load_prompts(prompts_path)[:limit]
    sampling = SamplingSettings(temperature=temperature, seed=seed)
    settings = GenerationSettings(max_tokens=max_tokens, max_draft_tokens=draft_tokens, sampling=sampling)
    backend_settings = make_backend_settings(n_ctx, n_batch, n_threads, n_gpu_layers, kv_type, flash_attn)
    choice = choose_model(model)
    _note(f"model: {choice.describe()}")
    backend, engine = open_engine(choice.path, backend_settings, use_budget=not fixed_draft)
    with backend:
        runners = [b.PeerMethod(m, choice.path, backend.n_ctx, backend_settings.n_threads, n_gpu_layers,
                                pld_tokens) if m in b.PEER_METHODS else b.EngineMethod(m, engine)
                   for m in names]
        with Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=None, transient=False) as progress:
            task = progress.add_task("runs", total=len(prompts) * len(runners) * repeats)
            report = b.run_bench(prompts, runners, backend, settings, repeats,
                                 on_run=lambda: progress.advance(task))
    summary, by_category = b.summarize(report["prompts"], names)
    report = {"model": choice.path.name, "device": b.device_description(backend_settings.n_threads,
                                                                          n_gpu_layers),
              "settings": {"max_tokens": max_tokens, "temperature": temperature, "seed": seed,
                           "repeats": repeats, "draft_tokens": draft_tokens, "adaptive": not fixed_draft,
                           "pld_tokens": pld_tokens, "n_ctx": backend.n_ctx,
                           "threads": backend_settings.n_threads, "prompts": len(prompts)},
              **report, "summary": summary, "by_category": by_category}
    out = Path(json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    table = b.markdown_table(report)
    out.with_suffix(".md").write_text(table)
    if not b.write_chart(report, out.with_suffix(".png")):
        _note("matplotlib is not installed; no chart written")
    click.echo(table)


@cli.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--target-mb", type=float, default=200.0, show_default=True,
              help="Weights read per decode step after widening, in MiB.")
def widen(src, dst, target_mb) -> None:
    """Write a function-preserving widened copy of a llama GGUF (zero FFN units) for benchmarks."""
    from localspec.demo.widen import widen_gguf

    if target_mb <= 0:
        raise click.UsageError("--target-mb must be > 0")
    result = widen_gguf(src, dst, target_weight_bytes=int(target_mb * 2**20))
    click.echo(f"wrote {result.path}: n_ff {result.n_ff_before} -> {result.n_ff_after}, "
               f"{result.step_bytes_before / 2**20:.1f} -> {result.step_bytes_after / 2**20:.1f} MiB "
               "read per decode step; outputs unchanged")


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure is one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="localspec", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        _note("aborted")
        return 130
    except click.UsageError as exc:
        _note(f"error: {exc.format_message()}")
        return 2
    except click.ClickException as exc:
        _note(f"error: {exc.format_message()}")
        return exc.exit_code
    except LocalspecError as exc:
        _note(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _note("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # last resort: a one-line report instead of a traceback
        if os.environ.get("LOCALSPEC_DEBUG"):
            raise
        _note(f"internal error: {type(exc).__name__}: {exc} (set LOCALSPEC_DEBUG=1 for details)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

