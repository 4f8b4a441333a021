"""`localspec info`: describe a model file without loading its weights."""

from __future__ import annotations

import json

import click

from localspec.models import choose_model


@click.command()
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
