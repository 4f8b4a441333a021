"""llama.cpp through llama-cpp-python's low-level API: one decode verifies a whole draft tree.

KV layout: sequence 0 holds the committed tokens. A draft tree with P root-to-leaf paths uses
sequences 0..P-1 (path 0 shares sequence 0, so chains need no copies); every tree node is tagged
with the ids of all paths through it, at position n_past + depth. After verification the winning
path is moved into sequence 0, branch sequences are dropped and sequence 0 is trimmed to the
accepted depth, so nothing is ever decoded twice.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections import deque
from pathlib import Path

import llama_cpp as lc
import numpy as np

from localspec.errors import BackendError, ContextOverflowError, ModelFileError
from localspec.modelfile import read_model_file
from localspec.settings import BackendSettings
from localspec.tree import DraftTree

GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
              "iq4_nl": 20, "bf16": 30}

# llama.cpp's logger is process-wide, so its callback and recent messages are too: the callback
# must outlive every model, and load errors are read back from the message buffer.
_LOG_LINES: deque[str] = deque(maxlen=64)


@lc.llama_log_callback
def _log_to_buffer(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", "replace") if text else ""
    _LOG_LINES.append(line)
    if os.environ.get("LOCALSPEC_LLAMA_LOG"):
        os.write(2, text or b"")


lc.llama_log_set(_log_to_buffer, ctypes.c_void_p())


def _last_error() -> str:
    """The most telling recent llama.cpp message: an 'error' line, else a 'failed' one."""
    lines = [line.strip() for line in _LOG_LINES if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():  # "llama_model_load: error loading model: <reason>"
            return re.split(r"error[^:]*: ", line, maxsplit=1)[-1]
    for line in reversed(lines):
        if "failed" in line.lower():
            return line.rsplit(": ", 1)[-1]
    return "llama.cpp could not load it"


class Vocabulary:
    """llama.cpp's tokenizer and token pieces for one loaded model; pieces are cached."""

    def __init__(self, handle) -> None:
        self.handle = handle  # a llama_vocab pointer, owned by its model
        self.n_vocab = lc.llama_vocab_n_tokens(handle)
        self.bos_token = lc.llama_vocab_bos(handle)
        self.eos_token = lc.llama_vocab_eos(handle)
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(self.handle, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:  # the buffer was short by -n
            capacity = -n
            buf = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self.handle, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes a token stands for (may be part of a UTF-8 character); special tokens as
        text only when `special`."""
        key = token if not special else -1 - token
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self.handle, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self.handle, token, buf, -n, 0, special)
            piece = self._pieces[key] = buf.raw[:n]
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.handle, token))


class TokenizesWithLlamaCpp:
    """The Backend protocol's vocabulary half, for backends whose `vocab` is llama.cpp's."""

    vocab: Vocabulary

    @property
    def bos_token(self) -> int:
        return self.vocab.bos_token

    @property
    def eos_token(self) -> int:
        return self.vocab.eos_token

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.vocab.tokenize(text, add_special, parse_special)

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        return self.vocab.token_bytes(token, special)

    def special_token_text(self, token: int) -> str:
        return "" if token < 0 else self.token_bytes(token, special=True).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return self.vocab.is_eog(token)


class LlamaCppBackend(TokenizesWithLlamaCpp):
    def __init__(self, model_path: str | Path, settings: BackendSettings | None = None) -> None:
        settings = settings or BackendSettings()
        self.settings = settings
        self.info = read_model_file(model_path)
        lc.llama_backend_init()

        model_params = lc.llama_model_default_params()
        model_params.n_gpu_layers = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else 999
        _LOG_LINES.clear()
        self._model = lc.llama_model_load_from_file(str(self.info.path).encode(), model_params)
        if not self._model:
            raise ModelFileError(f"cannot load {self.info.path.name}: {_last_error()}")
        self.vocab = Vocabulary(lc.llama_model_get_vocab(self._model))
        self.supports_trees = not (lc.llama_model_is_recurrent(self._model)
                                   or lc.llama_model_is_hybrid(self._model))
        # llama.cpp clamps n_batch to n_ctx and reserves an output row per sequence
        n_ctx = settings.n_ctx or lc.llama_model_n_ctx_train(self._model)
        n_batch = min(settings.n_batch, n_ctx)
        self.max_tree_paths = min(settings.max_tree_paths, n_batch) if self.supports_trees else 1

        ctx_params = lc.llama_context_default_params()
        ctx_params.n_ctx = settings.n_ctx
        ctx_params.n_batch = settings.n_batch
        ctx_params.n_ubatch = settings.n_batch
        ctx_params.n_seq_max = self.max_tree_paths
        ctx_params.kv_unified = True
        ctx_params.n_threads = settings.n_threads
        ctx_params.n_threads_batch = settings.n_threads
        ctx_params.type_k = ctx_params.type_v = GGML_TYPES[settings.kv_type]
        ctx_params.flash_attn_type = {None: lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
                                      True: lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                      False: lc.LLAMA_FLASH_ATTN_TYPE_DISABLED}[settings.flash_attn]
        ctx_params.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise ModelFileError(f"cannot create a context for {self.info.path.name}: {_last_error()}")
        self._mem = lc.llama_get_memory(self._ctx)
        self.n_ctx = lc.llama_n_ctx(self._ctx)
        self.n_batch = lc.llama_n_batch(self._ctx)
        self.n_vocab = self.vocab.n_vocab

        self._batch = lc.llama_batch_init(self.n_batch, 0, self.max_tree_paths)
        cap = self.n_batch
        self._b_token = np.ctypeslib.as_array(self._batch.token, shape=(cap,))
        self._b_pos = np.ctypeslib.as_array(self._batch.pos, shape=(cap,))
        self._b_nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(cap,))
        self._b_logits = np.ctypeslib.as_array(self._batch.logits, shape=(cap,))
        self._b_seq = [np.ctypeslib.as_array(self._batch.seq_id[i], shape=(self.max_tree_paths,))
                       for i in range(cap)]
        self._tokens: list[int] = []
        self._n_paths = 1  # sequences used by the last verified tree

    # -- vocabulary -----------------------------------------------------------------------------

    @property
    def tokens(self) -> list[int]:
        """Tokens whose KV is in sequence 0, in order."""
        return self._tokens

    @property
    def chat_template(self) -> str | None:
        raw = lc.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", "replace") if raw else None

    # -- KV cache ------------------------------------------------------------------------------

    def kv_pos_max(self, seq: int = 0) -> int:
        return lc.llama_memory_seq_pos_max(self._mem, seq)

    def truncate(self, n_keep: int) -> None:
        """Keep the first n_keep committed tokens (to reuse a shared prefix)."""
        if n_keep >= len(self._tokens):
            return
        if n_keep == 0 or not lc.llama_memory_seq_rm(self._mem, 0, n_keep, -1):
            lc.llama_memory_clear(self._mem, False)
            n_keep = 0
        del self._tokens[n_keep:]

    def prefill(self, tokens: list[int]) -> None:
        """Decode tokens into sequence 0 without asking for logits."""
        if len(self._tokens) + len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"{len(self._tokens) + len(tokens)} tokens do not fit the context of {self.n_ctx}")
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            n = len(chunk)
            self._b_token[:n] = chunk
            self._b_pos[:n] = np.arange(len(self._tokens), len(self._tokens) + n)
            self._b_nseq[:n] = 1
            self._b_logits[:n] = 0
            for i in range(n):
                self._b_seq[i][0] = 0
            self._decode(n)
            self._tokens.extend(chunk)

    def verify(self, root: int, tree: DraftTree) -> np.ndarray:
        """Decode root + tree in one batch; return logits [1 + len(tree), n_vocab] (a view)."""
        n = 1 + len(tree)
        n_past = len(self._tokens)
        if n > self.n_batch or n_past + n > self.n_ctx:
            raise ContextOverflowError(f"a tree of {len(tree)} nodes does not fit (n_past={n_past})")
        leaves = tree.leaves() if len(tree) else np.zeros(0, np.int64)
        n_paths = max(1, len(leaves))
        if n_paths > self.max_tree_paths:
            raise BackendError(f"tree has {n_paths} paths, more than {self.max_tree_paths}")
        self._b_token[0] = root
        self._b_token[1:n] = tree.tokens
        self._b_pos[0] = n_past
        self._b_pos[1:n] = n_past + tree.depths
        self._b_logits[:n] = 1
        self._b_nseq[0] = n_paths
        self._b_seq[0][:n_paths] = np.arange(n_paths)
        self._b_nseq[1:n] = 0
        for path, leaf in enumerate(leaves.tolist()):  # tag each node with the paths through it
            for node in tree.path_to(leaf):
                row = node + 1
                self._b_seq[row][self._b_nseq[row]] = path
                self._b_nseq[row] += 1
        for path in range(1, n_paths):
            lc.llama_memory_seq_cp(self._mem, 0, path, -1, -1)
        self._n_paths = n_paths
        self._decode(n)
        logits = lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(logits, shape=(n, self.n_vocab))

    def commit(self, root: int, tree: DraftTree, accepted: list[int]) -> None:
        """Keep root + the accepted path in sequence 0 and drop every other tree node."""
        n_past = len(self._tokens)
        if self._n_paths > 1:
            winner = 0
            if accepted:
                leaves = tree.leaves().tolist()
                winner = next(p for p, leaf in enumerate(leaves) if accepted[-1] in tree.path_to(leaf))
            if winner:
                lc.llama_memory_seq_rm(self._mem, 0, n_past + 1, -1)
                lc.llama_memory_seq_cp(self._mem, winner, 0, n_past + 1, -1)
            for path in range(1, self._n_paths):
                lc.llama_memory_seq_rm(self._mem, path, -1, -1)
            self._n_paths = 1
        if len(tree) and not lc.llama_memory_seq_rm(self._mem, 0, n_past + 1 + len(accepted), -1):
            raise BackendError("this model's cache cannot drop rejected draft tokens")
        self._tokens.append(root)
        self._tokens.extend(tree.tokens[accepted].tolist())

    def _decode(self, n: int) -> None:
        self._batch.n_tokens = n
        status = lc.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise BackendError(f"llama_decode failed with status {status}: {_last_error()}")

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            lc.llama_batch_free(self._batch)
            lc.llama_free(self._ctx)
            lc.llama_model_free(self._model)
            self._ctx = None

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
