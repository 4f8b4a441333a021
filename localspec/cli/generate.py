"""`localspec generate`: one prompt in, streamed text out."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import replace

import click

from localspec.cli.common import (
    ModelOptions,
    check_drafter,
    model_options,
    note,
    open_engine,
    resolve_model,
    resolve_settings,
)
from localspec.settings import GenerationSettings, SamplingSettings

DRAFT_TOKENS = GenerationSettings.max_draft_tokens


@click.command()
@model_options
@click.option("--prompt", "-p", required=True, help="Prompt text ('-' reads standard input).")
@click.option("--chat", is_flag=True, help="Send the prompt as a user message with the chat template.")
@click.option("--system", default=None, help="System message (with --chat).")
@click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", "-t", type=click.FloatRange(0, 100), default=0.0, show_default=True,
              help="0 = greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0 = off.")
@click.option("--min-p", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--repeat-penalty", type=float, default=1.0, show_default=True)
@click.option("--presence-penalty", type=float, default=0.0, show_default=True)
@click.option("--frequency-penalty", type=float, default=0.0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed for sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); never printed.")
@click.option("--drafter", "-d", default=None,
              help="Draft method: auto, recycling, retrieval, lookup, none (plain decoding), or with "
                   "--backend torch layerskip or polybasic; default auto, or what the memory plan or "
                   "profile chose.")
@click.option("--draft-tokens", type=click.IntRange(0, 255), default=None,
              help=f"Most draft tokens verified per step (default {DRAFT_TOKENS}; fewer if the plan "
                   "chose so).")
@click.option("--fixed-draft", is_flag=True,
              help="Verify every drafted token instead of letting the cost model pick the tree size.")
@click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
              help="Datastore from `localspec index build`, drafted from by auto and retrieval.")
@click.option("--learn/--no-learn", default=True, show_default=True,
              help="Keep Token Recycling's successor matrix on disk for this model between runs.")
@click.option("--stats", is_flag=True, help="Print one JSON line of speed statistics to stderr.")
def generate(opts: ModelOptions, prompt, chat, system, max_tokens, temperature, top_p, top_k, min_p,
             repeat_penalty, presence_penalty, frequency_penalty, seed, stop, drafter, draft_tokens,
             fixed_draft, index_path, learn, stats) -> None:
    """Generate text from a prompt, streamed to standard output."""
    from localspec.chat import Message, encode_chat
    from localspec.drafters import make_drafter
    from localspec.drafters.persist import restore_learned, save_learned
    from localspec.generate import stream_generate
    from localspec.indexing import check_index, read_index

    sampling = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty, seed=seed)
    settings = GenerationSettings(max_tokens=max_tokens, stop=tuple(stop), drafter=drafter or "auto",
                                  max_draft_tokens=DRAFT_TOKENS if draft_tokens is None else draft_tokens,
                                  sampling=sampling)  # checks the values before anything loads
    if drafter is not None:  # a drafter given by flag is checked before anything loads
        check_drafting(drafter, index_path, opts)
    if system is not None and not chat:
        raise click.UsageError("--system is a chat message: add --chat")
    store = read_index(index_path) if index_path else None
    if prompt == "-":
        prompt = read_stdin()
    choice = resolve_model(opts)
    if choice.is_demo:
        note(choice.describe())
    resolved = resolve_settings(opts, choice.path)
    planned = drafter is None
    drafter, draft_tokens = resolved.speculation(drafter, draft_tokens, DRAFT_TOKENS)
    if planned:  # chosen by the plan or the profile: checked now
        check_drafting(drafter, index_path, opts)
    settings = replace(settings, drafter=drafter, max_draft_tokens=draft_tokens)
    backend, engine = open_engine(choice.path, resolved.settings, use_budget=not fixed_draft,
                                  runtime=opts.runtime)
    with backend:
        if not backend.supports_trees and drafter != "none":
            note("this model's cache cannot drop rejected drafts; using plain decoding")
        if store is not None:
            check_index(store, index_path, backend)
            engine.drafters[drafter] = make_drafter(drafter, store)
        if learn:
            restore_learned(engine.drafter(drafter), choice.path, backend.n_vocab)
        if chat:
            messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
            tokens = encode_chat(backend, messages)
        else:
            tokens = backend.tokenize(prompt, add_special=True)
        chunk = None
        try:
            for chunk in stream_generate(engine, tokens, settings):
                if chunk.text:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
        finally:
            if learn:
                save_learned(engine.drafter(drafter), choice.path)
        sys.stdout.write("\n")
        if chunk is not None and chunk.finish_reason == "context":
            note(f"stopped: the context window ({backend.n_ctx} tokens) is full")
        if stats and chunk is not None:
            click.echo(json.dumps(chunk.stats.as_dict()), err=True)


def read_stdin() -> str:
    """Standard input as text; bytes that are not UTF-8 stay as surrogates for the tokenizer."""
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="surrogateescape")
    return sys.stdin.read()


def check_drafting(drafter: str, index_path: str | None, opts: ModelOptions) -> None:
    from localspec.drafters import INDEXED_DRAFTERS

    check_drafter(drafter, opts.runtime)
    if index_path and drafter not in INDEXED_DRAFTERS:
        raise click.UsageError("--index is used by the auto and retrieval drafters only")
