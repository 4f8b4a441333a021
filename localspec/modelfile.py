"""Read a GGUF file's metadata without loading it: validation, `localspec info`, planning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from localspec.errors import ModelFileError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelFileInfo:
    path: Path
    file_size: int
    architecture: str
    name: str
    n_params: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_embd: int
    context_length: int
    vocab_size: int
    tokenizer_model: str
    tokenizer_pre: str
    file_type: str
    tensor_types: dict[str, int]  # quantisation type -> number of tensors
    chat_template: str | None

    @property
    def head_dim(self) -> int:
        return self.n_embd // max(self.n_head, 1)


def _field_value(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.get_field(key)
    if field is None:
        return default
    value = field.contents()
    return value if value is not None else default


def read_model_file(path: str | Path) -> ModelFileInfo:
    """Parse the header of a GGUF; raise ModelFileError with a one-line reason if it is not one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"model path is a directory, not a GGUF file: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"not a GGUF file (bad magic {magic!r}): {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError, struct/numpy errors on a cut file
        raise ModelFileError(f"corrupt or truncated GGUF file: {path} ({exc})") from None
    file_size = path.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > file_size:
        raise ModelFileError(f"truncated GGUF file: {path} (needs {end} bytes, has {file_size})")

    arch = str(_field_value(reader, "general.architecture", "unknown"))

    def arch_int(key: str, default: int = 0) -> int:
        value = _field_value(reader, f"{arch}.{key}", default)
        if isinstance(value, list):  # per-layer values
            value = max(value) if value else default
        return int(value)

    tensor_types: dict[str, int] = {}
    n_params = 0
    for tensor in reader.tensors:
        type_name = gguf.GGMLQuantizationType(tensor.tensor_type).name
        tensor_types[type_name] = tensor_types.get(type_name, 0) + 1
        n_params += int(np.prod(tensor.shape))
    tokens = reader.get_field("tokenizer.ggml.tokens")
    file_type = _field_value(reader, "general.file_type")
    try:
        file_type_name = gguf.LlamaFileType(int(file_type)).name if file_type is not None else "unknown"
    except ValueError:
        file_type_name = str(file_type)
    n_head = arch_int("attention.head_count")
    return ModelFileInfo(
        path=path,
        file_size=file_size,
        architecture=arch,
        name=str(_field_value(reader, "general.name", path.stem)),
        n_params=n_params,
        n_layer=arch_int("block_count"),
        n_head=n_head,
        n_head_kv=arch_int("attention.head_count_kv", n_head),
        n_embd=arch_int("embedding_length"),
        context_length=arch_int("context_length"),
        vocab_size=len(tokens.data) if tokens is not None else 0,
        tokenizer_model=str(_field_value(reader, "tokenizer.ggml.model", "none")),
        tokenizer_pre=str(_field_value(reader, "tokenizer.ggml.pre", "default")),
        file_type=file_type_name.removeprefix("MOSTLY_").removeprefix("ALL_"),
        tensor_types=tensor_types,
        chat_template=_field_value(reader, "tokenizer.chat_template"),
    )
