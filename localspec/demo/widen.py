"""Widen a GGUF's feed-forward layers without changing what it computes: the bench variant.

A tiny model's decode step costs mostly per-call overhead; a real LLM's step costs reading its
weights. Appending FFN units whose gate and up rows and whose down column are all zero adds that
weight traffic while leaving every output bit-for-bit the same: the new units see 0 from gate and
up, so they add 0 * down = 0 to the residual stream.

Everything is copied at the byte level. In the types below an all-zero block decodes to zeros
(the scale is 0), so padding with zero bytes appends zero units and the original rows stay
bit-identical. New units come in multiples of 32, one quantisation block.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from localspec.errors import InvalidSettingsError, ModelFileError, UnsupportedModelError
from localspec.modelfile import read_model_file

T = gguf.GGMLQuantizationType
ZERO_IS_ZERO = frozenset({T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1})
UNIT_STEP = 32
DEFAULT_TARGET_BYTES = 200 * 2**20
ORIGINAL_N_FF_KEY = "localspec.widen.original_feed_forward_length"
FFN_TENSOR = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)\.weight")
MAX_N_FF = 2**32 - 1  # GGUF stores feed_forward_length as a uint32


class TargetTooLargeError(InvalidSettingsError):
    """The target width is more than a GGUF can describe."""


@dataclass(frozen=True)
class WidenResult:
    path: Path
    n_ff_before: int
    n_ff_after: int
    step_bytes_before: int  # weight bytes one decode step reads (all but the embedding lookup)
    step_bytes_after: int


def _row_bytes(tensor: gguf.ReaderTensor) -> int:
    block, size = gguf.GGML_QUANT_SIZES[T(tensor.tensor_type)]
    return int(tensor.shape[0]) // block * size


def _bytes_per_elements(tensor: gguf.ReaderTensor, n: int) -> int:
    block, size = gguf.GGML_QUANT_SIZES[T(tensor.tensor_type)]
    return n // block * size


def _raw(tensor: gguf.ReaderTensor) -> np.ndarray:
    """The tensor's bytes as [rows, row_bytes], a view of the memory-mapped file."""
    data = np.asarray(tensor.data).reshape(-1).view(np.uint8)
    return data.reshape(-1, _row_bytes(tensor))


def step_bytes(tensors: list[gguf.ReaderTensor]) -> int:
    """Weight bytes read per decoded token: everything except the embedding table, unless the
    output projection is tied to it."""
    names = {t.name for t in tensors}
    return sum(int(t.n_bytes) for t in tensors
               if t.name != "token_embd.weight" or "output.weight" not in names)


def _ffn_tensors(reader: gguf.GGUFReader, n_ff: int) -> dict[str, gguf.ReaderTensor]:
    ffn = {t.name: t for t in reader.tensors if FFN_TENSOR.fullmatch(t.name)}
    layers = {FFN_TENSOR.fullmatch(name).group(1) for name in ffn}  # type: ignore[union-attr]
    for t in reader.tensors:
        if t.name.startswith("blk.") and ".ffn_" in t.name and t.name not in ffn \
                and not t.name.endswith("ffn_norm.weight"):
            raise UnsupportedModelError(f"cannot widen a model with tensor {t.name}")
    for layer in layers:
        for kind in ("gate", "up", "down"):
            t = ffn.get(f"blk.{layer}.ffn_{kind}.weight")
            if t is None:
                raise UnsupportedModelError(f"layer {layer} has no ffn_{kind} weight")
            if T(t.tensor_type) not in ZERO_IS_ZERO:
                raise UnsupportedModelError(
                    f"cannot widen {t.name}: type {T(t.tensor_type).name} is not one of "
                    + ", ".join(sorted(q.name for q in ZERO_IS_ZERO)))
            ff_axis = 0 if kind == "down" else 1  # GGUF order: ne[0] is the input dimension
            if len(t.shape) != 2 or int(t.shape[ff_axis]) != n_ff:
                raise UnsupportedModelError(f"{t.name} has shape {list(t.shape)}, not n_ff={n_ff}")
    if not ffn:
        raise UnsupportedModelError("the model has no blk.N.ffn_gate/up/down weights")
    return ffn


def _metadata(reader: gguf.GGUFReader) -> Iterator[tuple[str, object, gguf.GGUFValueType,
                                                          gguf.GGUFValueType | None]]:
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture",
                                                             "general.alignment"):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        if main == gguf.GGUFValueType.ARRAY and len(field.types) > 2:
            raise UnsupportedModelError(f"cannot copy nested array metadata {field.name}")
        yield field.name, field.contents(), main, sub


def _read(src: Path) -> tuple[gguf.GGUFReader, str, int]:
    read_model_file(src)  # one-line ModelFileError for missing, foreign or truncated files
    reader = gguf.GGUFReader(str(src))
    arch_field = reader.get_field("general.architecture")
    if arch_field is None:
        raise ModelFileError(f"{src.name} has no general.architecture")
    arch = str(arch_field.contents())
    ff_field = reader.get_field(f"{arch}.feed_forward_length")
    if ff_field is None:
        raise UnsupportedModelError(f"{src.name} has no {arch}.feed_forward_length")
    if ff_field.types[0] == gguf.GGUFValueType.ARRAY:
        raise UnsupportedModelError("cannot widen a model with per-layer feed_forward_length")
    return reader, arch, int(ff_field.contents())


def widen_gguf(src: str | Path, dst: str | Path,
               target_weight_bytes: int = DEFAULT_TARGET_BYTES) -> WidenResult:
    """Write a function-preserving copy of `src` at `dst` whose decode step reads at least
    `target_weight_bytes` of weights (or an unchanged copy if it already does)."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dst.resolve() == src.resolve():
        raise ModelFileError("the widened copy must be written to a different file")
    reader, arch, n_ff = _read(src)
    ffn = _ffn_tensors(reader, n_ff)
    before = step_bytes(list(reader.tensors))

    chunk = sum(_row_bytes(t) * UNIT_STEP if not name.endswith("down.weight")
                else int(t.shape[1]) * _bytes_per_elements(t, UNIT_STEP)
                for name, t in ffn.items())  # bytes UNIT_STEP more units add across all layers
    extra = UNIT_STEP * max(0, math.ceil((target_weight_bytes - before) / chunk))
    new_ff = n_ff + extra
    if new_ff > MAX_N_FF:
        most = before + chunk * ((MAX_N_FF - n_ff) // UNIT_STEP)
        raise TargetTooLargeError(
            f"a target of {target_weight_bytes / 2**20:.0f} MiB needs feed_forward_length {new_ff}, more "
            f"than the {MAX_N_FF} a GGUF can store; {src.name} widens to at most {most / 2**20:.0f} MiB")
    needed = src.stat().st_size + chunk // UNIT_STEP * extra
    free = shutil.disk_usage(dst.parent).free if dst.parent.is_dir() else None
    if free is not None and needed > free:
        raise ModelFileError(f"the widened copy needs about {needed / 2**20:.0f} MiB but {dst.parent} "
                             f"has {free / 2**20:.0f} MiB free; lower the target")

    writer = gguf.GGUFWriter(None, arch)
    alignment = reader.get_field("general.alignment")
    if alignment is not None:
        writer.add_custom_alignment(int(alignment.contents()))
    original_n_ff = n_ff  # widening a widened copy keeps the first original
    for key, value, vtype, sub in _metadata(reader):
        if key == ORIGINAL_N_FF_KEY:
            original_n_ff = int(value)  # type: ignore[call-overload]
            continue
        if key == f"{arch}.feed_forward_length":
            value = new_ff
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.add_uint32(ORIGINAL_N_FF_KEY, original_n_ff)

    def widened(t: gguf.ReaderTensor) -> list[int]:
        """The byte shape to write, in numpy order ([..., ne1, row_bytes]), dims preserved."""
        shape = [int(n) for n in reversed(t.shape[1:])] + [_row_bytes(t)]
        if t.name in ffn and extra:
            if t.name.endswith("down.weight"):
                shape[-1] += _bytes_per_elements(t, extra)
            else:
                shape[-2] += extra
        return shape

    for t in reader.tensors:
        byte_shape = widened(t)
        writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape),
                               raw_dtype=T(t.tensor_type))

    tmp = dst.with_name(dst.name + ".part")
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:  # one tensor in memory at a time
            raw, byte_shape = _raw(t), widened(t)
            if math.prod(byte_shape) != raw.size:  # an FFN tensor: original rows, then zeros
                out = np.zeros((math.prod(byte_shape[:-1]), byte_shape[-1]), np.uint8)
                out[:raw.shape[0], :raw.shape[1]] = raw
                raw = out
            writer.write_tensor_data(np.ascontiguousarray(raw).reshape(byte_shape))
        writer.close()
        tmp.replace(dst)
    except BaseException as exc:  # an interrupted or failed write leaves no partial file
        with contextlib.suppress(OSError):
            writer.close()
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ModelFileError(f"cannot write {dst}: {exc}") from None
        if isinstance(exc, MemoryError):
            raise ModelFileError(f"not enough memory to write {dst}; lower the target") from None
        raise
    after = step_bytes(list(gguf.GGUFReader(str(dst)).tensors))
    return WidenResult(dst, n_ff, new_ff, before, after)
