"""llama.cpp through llama-cpp-python's low-level API: one decode verifies a whole draft tree.

KV layout: sequence 0 holds the committed tokens. A draft tree with P root-to-leaf paths uses
sequences 0..P-1 (path 0 shares sequence 0, so chains need no copies); every tree node is tagged
with the ids of all paths through it, at position n_past + depth. After verification the winning
path is moved into sequence 0, branch sequences are dropped and sequence 0 is trimmed to the
accepted depth.

Bit-identical to plain decoding: llama.cpp sums attention over cache cells in cell order, so the
cells of sequence 0 must stay in position order, as plain decoding leaves them. Nodes go into the
batch depth-first; accepted nodes that do not sit right behind the root are dropped and decoded
again in front of the next batch (`n_cached` < len(tokens) until then). The last sequence pads
single-token batches (see `_decode`).
"""

from __future__ import annotations

import ctypes
import os
import re
from collections import deque
from pathlib import Path

import llama_cpp as lc
import numpy as np

from localspec.errors import BackendError, ContextOverflowError, InvalidTextError, ModelFileError
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


def utf8_bytes(text: str) -> bytes:
    """Text as UTF-8 for llama.cpp, which reads bytes that are not UTF-8 as U+FFFD. Such bytes
    from the command line or standard input arrive as surrogates and go back out as they came."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:  # a lone surrogate that stood for no byte ("\ud800" in JSON)
        raise InvalidTextError(f"the text is not valid Unicode: {exc.object[exc.start]!a} at "
                                   f"character {exc.start} is half of a surrogate pair") from None


class Vocabulary:
    """llama.cpp's tokenizer and token pieces for one loaded model; pieces are cached."""

    def __init__(self, handle) -> None:
        self.handle = handle  # a llama_vocab pointer, owned by its model
        self.n_vocab = lc.llama_vocab_n_tokens(handle)
        self.bos_token = lc.llama_vocab_bos(handle)
        self.eos_token = lc.llama_vocab_eos(handle)
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = utf8_bytes(text)
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


# llama.cpp's CPU flash attention works row by row for batches of up to 63 queries and in tiles,
# rounding differently, from 64 on: waiting tokens only join a verify batch below that size.
ROW_BY_ROW_ATTENTION_MAX = 63


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
        self.max_tree_paths = min(settings.max_tree_paths, n_batch - 1) if self.supports_trees else 1

        ctx_params = lc.llama_context_default_params()
        ctx_params.n_ctx = settings.n_ctx
        ctx_params.n_batch = settings.n_batch
        ctx_params.n_ubatch = settings.n_batch
        ctx_params.n_seq_max = self.max_tree_paths + 1  # the last one pads lone tokens (_decode)
        ctx_params.kv_unified = True
        ctx_params.n_threads = settings.n_threads
        ctx_params.n_threads_batch = settings.n_threads
        ctx_params.type_k = ctx_params.type_v = GGML_TYPES[settings.kv_type]
        ctx_params.flash_attn_type = {None: lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
                                      True: lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                      False: lc.LLAMA_FLASH_ATTN_TYPE_DISABLED}[settings.resolved_flash_attn]
        ctx_params.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise ModelFileError(f"cannot create a context for {self.info.path.name}: {_last_error()}")
        self._mem = lc.llama_get_memory(self._ctx)
        self.n_ctx = lc.llama_n_ctx(self._ctx)
        self.n_batch = lc.llama_n_batch(self._ctx)
        self.n_vocab = self.vocab.n_vocab

        self._batch = lc.llama_batch_init(self.n_batch, 0, self.max_tree_paths + 1)
        cap = self.n_batch
        self._b_token = np.ctypeslib.as_array(self._batch.token, shape=(cap,))
        self._b_pos = np.ctypeslib.as_array(self._batch.pos, shape=(cap,))
        self._b_nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(cap,))
        self._b_logits = np.ctypeslib.as_array(self._batch.logits, shape=(cap,))
        self._b_seq = [np.ctypeslib.as_array(self._batch.seq_id[i], shape=(self.max_tree_paths + 1,))
                       for i in range(cap)]
        self._tokens: list[int] = []  # committed tokens; the first _n_cached have KV in seq 0
        self._n_cached = 0
        self._n_paths = 1  # sequences used by the last verified tree
        self._rows = np.zeros(0, np.int64)  # logits row of each node of the last verified tree

    # -- vocabulary -----------------------------------------------------------------------------

    @property
    def tokens(self) -> list[int]:
        """Committed tokens, in order: those in sequence 0, then any waiting to be re-decoded."""
        return self._tokens

    @property
    def n_cached(self) -> int:
        """How many of `tokens` have their KV in sequence 0 (the rest go into the next batch)."""
        return self._n_cached

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
        if n_keep < self._n_cached:
            if n_keep == 0 or not lc.llama_memory_seq_rm(self._mem, 0, n_keep, -1):
                lc.llama_memory_clear(self._mem, False)
                n_keep = 0
            self._n_cached = n_keep
        del self._tokens[n_keep:]

    def prefill(self, tokens: list[int]) -> None:
        """Decode tokens into sequence 0 without asking for logits."""
        if len(self._tokens) + len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"{len(self._tokens) + len(tokens)} tokens do not fit the context of {self.n_ctx}")
        self._tokens.extend(tokens)
        self._decode_pending()

    def _decode_pending(self) -> None:
        """Decode every committed token not yet in the cache into sequence 0, in order."""
        while self._n_cached < len(self._tokens):
            chunk = self._tokens[self._n_cached:self._n_cached + self.n_batch]
            n = len(chunk)
            self._b_token[:n] = chunk
            self._b_pos[:n] = np.arange(self._n_cached, self._n_cached + n)
            self._b_nseq[:n] = 1
            self._b_logits[:n] = 0
            for i in range(n):
                self._b_seq[i][0] = 0
            self._decode(n)
            self._n_cached += n

    def verify(self, root: int, tree: DraftTree) -> np.ndarray:
        """Decode root + tree in one batch; return logits [1 + len(tree), n_vocab].

        Committed tokens still waiting for their KV ride in front of the root, and the nodes go
        in depth-first order, so that the cache stays laid out like plain decoding's (see commit).
        """
        n_past = len(self._tokens)
        if 1 + len(tree) > self.n_batch or n_past + 1 + len(tree) > self.n_ctx:
            raise ContextOverflowError(f"a tree of {len(tree)} nodes does not fit (n_past={n_past})")
        if n_past - self._n_cached + 1 + len(tree) > min(self.n_batch, ROW_BY_ROW_ATTENTION_MAX):
            self._decode_pending()
        k = n_past - self._n_cached
        n = k + 1 + len(tree)
        leaves = tree.leaves() if len(tree) else np.zeros(0, np.int64)
        n_paths = max(1, len(leaves))
        if n_paths > self.max_tree_paths:
            raise BackendError(f"tree has {n_paths} paths, more than {self.max_tree_paths}")
        order = tree.depth_first_order()
        rows = np.empty(len(tree), np.int64)  # batch row of each node
        rows[order] = np.arange(k + 1, n)
        self._b_token[:k] = self._tokens[self._n_cached:]
        self._b_token[k] = root
        self._b_token[rows] = tree.tokens
        self._b_pos[:k + 1] = np.arange(self._n_cached, n_past + 1)
        self._b_pos[rows] = n_past + tree.depths
        self._b_logits[:k] = 0
        self._b_logits[k:n] = 1
        self._b_nseq[:k + 1] = n_paths
        every_path = np.arange(n_paths)
        for row in range(k + 1):  # waiting tokens and the root are in every path
            self._b_seq[row][:n_paths] = every_path
        self._b_nseq[k + 1:n] = 0
        for path, leaf in enumerate(leaves.tolist()):  # tag each node with the paths through it
            for row in rows[tree.path_to(leaf)].tolist():
                self._b_seq[row][self._b_nseq[row]] = path
                self._b_nseq[row] += 1
        for path in range(1, n_paths):
            lc.llama_memory_seq_cp(self._mem, 0, path, -1, -1)
        self._n_paths = n_paths
        self._decode(n)
        self._n_cached = n_past
        self._rows = rows - k
        logits = np.ctypeslib.as_array(lc.llama_get_logits(self._ctx), shape=(n - k, self.n_vocab))
        if np.array_equal(order, np.arange(len(tree))):
            return logits
        return logits[np.concatenate(([0], self._rows))]

    def commit(self, root: int, tree: DraftTree, accepted: list[int]) -> None:
        """Keep root + the accepted path in sequence 0 and drop every other tree node; accepted
        nodes not right behind the root wait for the next batch (see the module docstring)."""
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
        in_place = 0  # accepted nodes in the rows right after the root
        while in_place < len(accepted) and self._rows[accepted[in_place]] == in_place + 1:
            in_place += 1
        if len(tree) and not lc.llama_memory_seq_rm(self._mem, 0, n_past + 1 + in_place, -1):
            raise BackendError("this model's cache cannot drop rejected draft tokens")
        self._tokens.append(root)
        self._tokens.extend(tree.tokens[accepted].tolist())
        self._n_cached = n_past + 1 + in_place

    def _decode(self, n: int) -> None:
        # On the CPU a lone query takes llama.cpp's split-KV attention once the cache holds 512
        # cells, which rounds differently from the row-by-row attention of a batch: a throwaway
        # copy of the token in a spare sequence keeps plain decoding on the same path as trees.
        pad = n == 1 and self.supports_trees and self._b_pos[0] + 2 <= self.n_ctx
        if pad:
            self._b_token[1], self._b_pos[1] = self._b_token[0], self._b_pos[0]
            self._b_nseq[1], self._b_seq[1][0], self._b_logits[1] = 1, self.max_tree_paths, 0
            n = 2
        self._batch.n_tokens = n
        status = lc.llama_decode(self._ctx, self._batch)
        if pad:
            lc.llama_memory_seq_rm(self._mem, self.max_tree_paths, -1, -1)
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
