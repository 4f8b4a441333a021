"""`localspec chat`: the terminal chat app (Textual, in the `tui` package)."""

from __future__ import annotations

from pathlib import Path

import click

from localspec.cli.common import ModelOptions, model_options, open_engine, resolve_model, resolve_settings


@click.command()
@model_options
@click.option("--fixed-draft", is_flag=True,
              help="Verify every drafted token instead of letting the cost model pick the tree size.")
@click.option("--learn/--no-learn", default=True, show_default=True,
              help="Keep Token Recycling's successor matrix on disk for this model between runs.")
def chat(opts: ModelOptions, fixed_draft: bool, learn: bool) -> None:
    """Chat with a model in the terminal; conversations are kept between runs."""
    from tui import ChatApp, ChatOptions
    from tui.chatmodel import ChatModel

    choice = resolve_model(opts)
    first = resolve_settings(opts, choice.path, measure=False)  # cheap: for the picker's estimates

    def load(path: Path) -> ChatModel:
        # runs in the app's loading worker, so planning and cost-curve measuring never block the window
        resolved = resolve_settings(opts, path)
        backend, engine = open_engine(path, resolved.settings, use_budget=not fixed_draft,
                                       runtime=opts.runtime)
        budget = resolved.plan.budget if resolved.plan is not None else None
        return ChatModel(path, backend, engine, memory_budget=budget, learn=learn)

    options = ChatOptions(model=choice.path, n_ctx=first.settings.n_ctx, kv_type=first.settings.kv_type)
    ChatApp(options, load_model=load).run()
