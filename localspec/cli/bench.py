"""`localspec bench`: every method on a prompt set, interleaved, against plain decoding."""

from __future__ import annotations

from pathlib import Path

import click

from localspec.cli.common import (
    ModelOptions,
    check_writable_folder,
    model_options,
    note,
    open_engine,
    resolve_model,
    resolve_settings,
)
from localspec.settings import GenerationSettings, SamplingSettings


def check_output(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    """The --json path, checked before any slow work: a .json file whose .md and .png siblings are
    not folders either, in a folder that exists (or can be made) and takes new files."""
    out = Path(value)
    if out.suffix.lower() != ".json":
        raise click.BadParameter(f"{value!r} must end in .json (the table and chart are written beside "
                                 "it with .md and .png)")
    for path in (out, out.with_suffix(".md"), out.with_suffix(".png")):
        if path.is_dir():
            raise click.BadParameter(f"{path} is a directory; name a file")
    check_writable_folder(out, "'--json'")
    return out


@click.command()
@model_options
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
@click.option("--prime", is_flag=True,
              help="Prime Token Recycling's matrix from the model first, as `localspec tune` does "
                   "(untimed); without it every drafter starts cold.")
@click.option("--pld-tokens", type=click.IntRange(min=1), default=10, show_default=True,
              help="num_pred_tokens for llama-cpp-python's prompt lookup (peer-pld).")
@click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
              help="Datastore from `localspec index build` for the auto and retrieval methods.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N prompts.")
@click.option("--json", "json_path", required=True, callback=check_output,
              help="Where to write results: a .json file; the table and chart go beside it as .md and .png.")
def bench(opts: ModelOptions, prompts_path, methods,
          max_tokens, temperature, seed, repeats, draft_tokens, fixed_draft, prime, pld_tokens, index_path,
          limit, json_path: Path) -> None:
    """Measure methods against plain decoding and llama-cpp-python on a prompt set."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from localspec import bench as b
    from localspec.drafters import DRAFTERS, INDEXED_DRAFTERS, TORCH_DRAFTERS, make_drafter
    from localspec.indexing import check_index, read_index

    names = list(dict.fromkeys(m.strip() for m in methods.split(",") if m.strip()))
    known = [*DRAFTERS, *b.PEER_METHODS, *(TORCH_DRAFTERS if opts.backend == "torch" else ())]
    if not names:
        raise click.UsageError(f"--methods is empty; choose from {', '.join(known)}")
    unknown = [m for m in names if m not in known]
    if unknown:
        hint = " (layerskip and polybasic need --backend torch)" if set(unknown) & set(TORCH_DRAFTERS) else ""
        raise click.UsageError(f"unknown method(s) {', '.join(unknown)}; "
                               f"choose from {', '.join(known)}{hint}")
    peers = [name for name in names if name in b.PEER_METHODS]
    if peers and opts.backend == "torch":
        raise click.UsageError(f"the peer methods ({', '.join(peers)}) run llama.cpp, so their speed is not "
                               "comparable with the torch backend's; bench them without --backend torch")
    if repeats < 1:
        raise click.UsageError("--repeats must be >= 1")
    indexed = [name for name in names if name in INDEXED_DRAFTERS]
    if index_path and not indexed:
        raise click.UsageError("--index is used by the auto and retrieval methods only; bench one of them")
    store = read_index(index_path) if index_path else None
    if "none" not in names:
        names.insert(0, "none")  # every speedup is measured against plain decoding
    prompts = b.load_prompts(prompts_path)[:limit]
    sampling = SamplingSettings(temperature=temperature, seed=seed)
    settings = GenerationSettings(max_tokens=max_tokens, max_draft_tokens=draft_tokens, sampling=sampling)
    choice = resolve_model(opts)
    backend_config = resolve_settings(opts, choice.path).settings
    note(f"model: {choice.describe()}")
    backend, engine = open_engine(choice.path, backend_config, use_budget=not fixed_draft,
                                  runtime=opts.runtime)
    with backend:
        if store is not None:
            check_index(store, index_path, backend)
            for name in indexed:
                engine.drafters[name] = make_drafter(name, store)
        if prime:
            note(f"primed the recycling matrix for {b.prime_drafters(engine, names)} tokens")
        runners = [b.PeerMethod(m, choice.path, backend.n_ctx, backend_config.n_threads,
                                backend_config.n_gpu_layers, pld_tokens)
                   if m in b.PEER_METHODS else b.EngineMethod(m, engine)
                   for m in names]
        with Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=None, transient=False) as progress:
            task = progress.add_task("runs", total=len(prompts) * len(runners) * repeats)
            report = b.run_bench(prompts, runners, backend, settings, repeats,
                                 on_run=lambda: progress.advance(task))
    summary, by_category = b.summarize(report["prompts"], names)
    device = b.device_description(backend_config.n_threads, backend_config.n_gpu_layers)
    if opts.backend == "torch":
        device = f"torch {backend.device} {backend.settings.resolved_dtype()}, {device}"
    report = {"model": choice.path.name, "device": device,
              "settings": {"max_tokens": max_tokens, "temperature": temperature, "seed": seed,
                           "repeats": repeats, "draft_tokens": draft_tokens, "adaptive": not fixed_draft,
                           "primed": prime, "index": Path(index_path).name if index_path else None,
                           "pld_tokens": pld_tokens, "n_ctx": backend.n_ctx,
                           "threads": backend_config.n_threads, "prompts": len(prompts)},
              **report, "summary": summary, "by_category": by_category}
    if not b.write_report(report, json_path):
        note("matplotlib is not installed; no chart written")
    click.echo(b.markdown_table(report))
