"""`localspec widen`: a bigger, function-preserving copy of a model for benchmarks."""

from __future__ import annotations

import math
from pathlib import Path

import click


@click.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--target-mb", type=float, default=200.0, show_default=True,
              help="Weights read per decode step after widening, in MiB.")
def widen(src: str, dst: str, target_mb: float) -> None:
    """Write a function-preserving widened copy of a llama GGUF (zero FFN units) for benchmarks."""
    from localspec.demo.widen import TargetTooLargeError, widen_gguf

    if not math.isfinite(target_mb) or target_mb <= 0:
        raise click.BadParameter(f"{target_mb} is not a positive number of MiB", param_hint="--target-mb")
    folder = Path(dst).expanduser().parent
    if not folder.is_dir():
        raise click.BadParameter(f"folder {folder} does not exist or is not a folder", param_hint="DST")
    try:
        result = widen_gguf(src, dst, target_weight_bytes=int(target_mb * 2**20))
    except TargetTooLargeError as exc:
        raise click.BadParameter(str(exc), param_hint="--target-mb") from None
    click.echo(f"wrote {result.path}: n_ff {result.n_ff_before} -> {result.n_ff_after}, "
               f"{result.step_bytes_before / 2**20:.1f} -> {result.step_bytes_after / 2**20:.1f} MiB "
               "read per decode step; outputs unchanged")
