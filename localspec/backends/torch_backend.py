"""The torch backend: a GGUF run by our own PyTorch model, behind the same interface as llama.cpp.

Tokenisation is llama.cpp's own (the GGUF loaded with `vocab_only`), so token ids and bytes are
exactly what the llama.cpp backend produces. Cache slots: committed tokens fill [0, n_past); a
verify writes the pending root at n_past and tree node i at n_past + 1 + i (rope position
n_past + depth); commit moves the accepted nodes' K/V down next to the root. Slots from
`scratch_base` on are free for drafters (a layer-skipped draft, a skip-set evaluation); the next
verify overwrites whatever they wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as lc
import numpy as np
import torch

from localspec.backends.llamacpp import TokenizesWithLlamaCpp, Vocabulary  # also routes llama.cpp's log
from localspec.backends.torch_model import FULL, SkipSet, Transformer, load_gguf
from localspec.budget import CostCurve, cached_cost_curve
from localspec.errors import ContextOverflowError, InvalidSettingsError, ModelFileError
from localspec.modelfile import read_model_file
from localspec.settings import default_threads
from localspec.tree import DraftTree

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def best_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


@dataclass(frozen=True)
class TorchSettings:
    device: str | None = None  # cuda | mps | cpu; None = the best available
    dtype: str | None = None  # None = bfloat16 on CPUs with native bf16, else float32; GPU float16
    n_ctx: int = 4096  # 0 = the model's training context
    n_threads: int = field(default_factory=default_threads)
    max_tree_nodes: int = 128  # most nodes one verify takes
    scratch_slots: int = 192  # cache rows past the tree region, for drafters

    def __post_init__(self) -> None:
        if self.device not in (None, "cuda", "mps", "cpu") and not str(self.device).startswith("cuda:"):
            raise InvalidSettingsError(f"device must be cuda, mps or cpu, got {self.device!r}")
        if self.dtype not in (None, *DTYPES):
            raise InvalidSettingsError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.n_ctx < 0 or self.n_threads < 1 or self.max_tree_nodes < 1 or self.scratch_slots < 0:
            raise InvalidSettingsError("n_ctx, n_threads, max_tree_nodes and scratch_slots out of range")

    def resolved_device(self) -> str:
        device = self.device or best_device()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidSettingsError("device cuda: PyTorch sees no CUDA device here (use cpu, or a "
                                       "CUDA build of torch)")
        if device == "mps" and not _mps_available():
            raise InvalidSettingsError("device mps: PyTorch sees no Apple GPU here (use cpu)")
        return device

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype:
            return DTYPES[self.dtype]
        if self.resolved_device() != "cpu":
            return torch.float16
        # with native bf16 a verify of 2-16 tokens costs what one costs; f32 GEMM is 2-5x slower
        return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def visibility(n_prefix: int, base: int, parents: np.ndarray, device: torch.device) -> torch.Tensor:
    """Attention mask [n, base + n]: row i sees slots [0, n_prefix) and, among slots base + j,
    itself and its ancestors (parents[i] = -1: none). Slots in [n_prefix, base) stay hidden."""
    n = len(parents)
    block = np.eye(n, dtype=bool)
    for i, parent in enumerate(parents.tolist()):  # parents come first; n is the block size
        if parent >= 0:
            block[i] |= block[parent]
    mask = np.zeros((n, base + n), bool)
    mask[:, :n_prefix] = True
    mask[:, base:] = block
    return torch.from_numpy(mask).to(device)


def chain_parents(n: int) -> np.ndarray:
    return np.arange(-1, n - 1)


class VocabOnlyModel:
    """llama.cpp's tokenizer for a GGUF, loaded without weights."""

    def __init__(self, path: Path) -> None:
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.vocab_only = True
        self._model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelFileError(f"llama.cpp cannot read the vocabulary of {path.name}")
        self.vocab = Vocabulary(lc.llama_model_get_vocab(self._model))
        raw = lc.llama_model_chat_template(self._model, None)
        self.chat_template = raw.decode("utf-8", "replace") if raw else None

    def close(self) -> None:
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None


class TorchBackend(TokenizesWithLlamaCpp):
    supports_trees = True

    def __init__(self, model_path: str | Path, settings: TorchSettings | None = None) -> None:
        self.settings = settings = settings or TorchSettings()
        self.info = read_model_file(model_path)
        self.device = settings.resolved_device()
        torch.set_num_threads(settings.n_threads)
        self._vocab_model = VocabOnlyModel(self.info.path)
        self.vocab = self._vocab_model.vocab
        self.n_ctx = settings.n_ctx or self.info.context_length
        self.max_tree_paths = settings.max_tree_nodes
        n_slots = self.n_ctx + settings.max_tree_nodes + 1 + settings.scratch_slots
        self.model: Transformer = load_gguf(self.info.path, n_slots, self.device, settings.resolved_dtype())
        self.n_vocab = self.model.args.vocab_size
        self._tokens: list[int] = []
        self._dev = self.model.device

    # -- vocabulary ---------------------------------------------------------------------------

    @property
    def tokens(self) -> list[int]:
        return self._tokens

    @property
    def n_cached(self) -> int:
        return len(self._tokens)

    @property
    def chat_template(self) -> str | None:
        return self._vocab_model.chat_template

    # -- forward passes -----------------------------------------------------------------------

    @property
    def scratch_base(self) -> int:
        """First cache slot no verify of the current step can touch."""
        return len(self._tokens) + 1 + self.settings.max_tree_nodes

    def run(self, tokens: np.ndarray | list[int], positions: np.ndarray, slots: np.ndarray,
            mask: torch.Tensor, skip: SkipSet = FULL, rows: np.ndarray | None = None
            ) -> torch.Tensor | None:
        """One forward of the (possibly layer-skipped) model; float32 logits on the device."""
        def t(a) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, np.int64), device=self._dev)

        return self.model(t(tokens), t(positions), t(slots), mask, skip,
                          None if rows is None else t(rows))

    def run_tree(self, n_past: int, tokens: np.ndarray, parents: np.ndarray, depths: np.ndarray,
                 base: int, skip: SkipSet = FULL) -> torch.Tensor:
        """Tokens forming a tree (parents -1 = hanging off the committed prefix) at slots base + i,
        rope position n_past + depth - 1; every row sees the first n_past slots."""
        mask = visibility(n_past, base, parents, self._dev)
        return self.run(tokens, n_past + depths - 1, base + np.arange(len(tokens)), mask, skip)

    def exit_guesses_tree(self, n_past: int, tokens: np.ndarray, parents: np.ndarray, depths: np.ndarray,
                          base: int, guess: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """Like run_tree with the full model, but `guess` of the logits after every layer:
        [n_layer, n, ...]."""
        def t(a) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, np.int64), device=self._dev)

        mask = visibility(n_past, base, parents, self._dev)
        return self.model.exit_guesses(t(tokens), t(n_past + depths - 1), t(base + np.arange(len(tokens))),
                                       mask, guess).cpu().numpy()

    def synchronize(self) -> None:
        """Wait for the work queued on the device: on a GPU a forward returns before its kernels
        have run, so whoever times one must wait for them."""
        if self._dev.type == "cuda":
            torch.cuda.synchronize(self._dev)
        elif self._dev.type == "mps":
            torch.mps.synchronize()

    # -- the Backend contract ---------------------------------------------------------------------

    def truncate(self, n_keep: int) -> None:
        del self._tokens[n_keep:]  # later writes overwrite the dropped slots

    def prefill(self, tokens: list[int], chunk: int = 256) -> None:
        if len(self._tokens) + len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"{len(self._tokens) + len(tokens)} tokens do not fit the context of {self.n_ctx}")
        for start in range(0, len(tokens), chunk):
            part = tokens[start:start + chunk]
            n_past, n = len(self._tokens), len(part)
            mask = visibility(n_past, n_past, chain_parents(n), self._dev)
            positions = np.arange(n_past, n_past + n)
            self.run(part, positions, positions, mask, rows=np.zeros(0, np.int64))
            self._tokens.extend(part)

    def verify(self, root: int, tree: DraftTree) -> np.ndarray:
        """Root + tree in one forward; logits [1 + len(tree), n_vocab] as float32."""
        n_past, n = len(self._tokens), 1 + len(tree)
        if len(tree) > self.settings.max_tree_nodes or n_past + n > self.n_ctx:
            raise ContextOverflowError(f"a tree of {len(tree)} nodes does not fit (n_past={n_past})")
        tokens = np.concatenate([[root], tree.tokens]).astype(np.int64)
        parents = np.concatenate([[-1], tree.parents + 1])
        depths = np.concatenate([[1], tree.depths + 1])
        return self.run_tree(n_past, tokens, parents, depths, n_past).cpu().numpy()

    def commit(self, root: int, tree: DraftTree, accepted: list[int]) -> None:
        """Keep root + the accepted path: move the accepted nodes' K/V next to the root."""
        n_past = len(self._tokens)
        if accepted and accepted != list(range(len(accepted))):
            src = torch.as_tensor(n_past + 1 + np.asarray(accepted), device=self._dev)
            dst = torch.arange(n_past + 1, n_past + 1 + len(accepted), device=self._dev)
            self.model.cache.move(src, dst)
        self._tokens.append(root)
        self._tokens.extend(tree.tokens[accepted].tolist())

    def close(self) -> None:
        self._vocab_model.close()

    def __enter__(self) -> TorchBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cached_torch_cost_curve(backend: TorchBackend, refresh: bool = False,
                            sizes: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
                            ) -> CostCurve:
    """The verify cost curve t(n) of this model on this device, dtype and thread count (cached)."""
    s = backend.settings
    return cached_cost_curve(backend, backend.info.path, f"{backend.device}|{s.resolved_dtype()}",
                             s.n_threads, refresh, kind="torch", sizes=sizes, repeats=3)
