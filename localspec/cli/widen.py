"""`localspec widen`: a bigger, function-preserving copy of a model for benchmarks."""

from __future__ import annotations

import click


@click.command()
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
