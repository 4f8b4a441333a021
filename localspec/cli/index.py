"""`localspec index build`: a retrieval datastore from a user's files, used with `--index`."""

from __future__ import annotations

from pathlib import Path

import click

from localspec.cli.common import check_writable_folder, note
from localspec.models import choose_model


@click.group()
def index() -> None:
    """Build retrieval datastores from your own files."""


@index.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--model", "-m", "model", envvar="LOCALSPEC_MODEL", type=click.Path(),
              help="GGUF model whose tokenizer the index is for (default: the demo model).")
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False),
              help="Index file to write.")
def build(paths, model, out) -> None:
    """Tokenise the text files under PATHS into a datastore for `--index`."""
    from localspec.backends.llamacpp import LlamaCppBackend
    from localspec.indexing import build_index, write_index
    from localspec.settings import BackendSettings

    target = Path(out)
    check_writable_folder(target, "'--out'")  # before the slow tokenising
    choice = choose_model(model)
    if choice.is_demo:
        note(choice.describe())
    with LlamaCppBackend(choice.path, BackendSettings(n_ctx=64, n_batch=64, n_threads=1)) as backend:
        store, report = build_index(backend, paths)
    write_index(store, target)
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items()))
    click.echo(f"wrote {target}: {len(report.files)} files, {report.tokens:,} tokens, "
               f"{target.stat().st_size / 2**20:.1f} MiB" + (f" (skipped: {skipped})" if skipped else ""))
