"""A Llama-family transformer in plain PyTorch, for inference from GGUF weights.

llama (which is also how llama.cpp stores mistral: GQA, untied output) and qwen2 (q/k/v biases,
NEOX rope). One static KV cache is preallocated: a forward writes each token's
K/V at a given cache slot and attends through an explicit [tokens, slots] mask, so a draft tree
(nodes at the same position in different slots), a committed prefix and scratch rows all live in
one buffer and nothing is ever rolled back. Any set of attention / MLP sublayers can be skipped,
which is what self-speculative drafting needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from localspec.errors import ModelFileError, UnsupportedModelError

# architecture -> (rope rotates halves (NEOX) rather than adjacent pairs, q/k/v have biases)
ARCHITECTURES = {"llama": (False, False), "qwen2": (True, True)}


@dataclass(frozen=True)
class ModelArgs:
    arch: str
    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    rope_neox: bool = False
    qkv_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class SkipSet:
    """Sublayers left out of a forward pass (layer indices)."""

    attn: frozenset[int] = frozenset()
    mlp: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.attn) + len(self.mlp)

    def as_bits(self, n_layer: int) -> np.ndarray:
        """[attn of layer 0..L-1, mlp of layer 0..L-1] as 0/1."""
        bits = np.zeros(2 * n_layer, np.int8)
        bits[list(self.attn)] = 1
        bits[[n_layer + i for i in self.mlp]] = 1
        return bits


FULL = SkipSet()


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # llama.cpp normalises in f32 whatever the weight type
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


def rope_tables(args: ModelArgs, n_pos: int, freq_factors: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n_pos, head_dim // 2]: pair i turns by pos * theta^(-2i / head_dim) / factor_i."""
    half = args.head_dim // 2
    freqs = args.rope_theta ** (-torch.arange(half, dtype=torch.float64) * 2 / args.head_dim)
    if freq_factors is not None:
        freqs = freqs / freq_factors.double()
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """x [tokens, heads, head_dim]; cos/sin [tokens, head_dim // 2]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    if neox:  # pairs (x[i], x[i + d/2])
        x0, x1 = x.chunk(2, dim=-1)
        return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]  # pairs (x[2i], x[2i + 1])
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2).to(x.dtype)


class KVCache(nn.Module):
    """Preallocated K and V for every layer: [layers, kv heads, slots, head_dim]."""

    def __init__(self, args: ModelArgs, n_slots: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        shape = (args.n_layer, args.n_head_kv, n_slots, args.head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy slots src -> dst in every layer (gathered first, so overlaps are safe)."""
        self.k[:, :, dst] = self.k[:, :, src]
        self.v[:, :, dst] = self.v[:, :, src]


def batch_invariant_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
                           min_rows: int = 8) -> torch.Tensor:
    """F.linear whose rows do not depend on how many rows there are: oneDNN switches to another
    kernel (another summation order) from about 7 rows on, so fewer rows are padded with zeros."""
    n = x.shape[0]
    if n >= min_rows:
        return F.linear(x, w, b)
    return F.linear(torch.cat([x, x.new_zeros(min_rows - n, x.shape[1])]), w, b)[:n]


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention in float64: q [heads, T, D], k/v [kv heads, L, D], mask [T, L] -> [heads, T, D].

    Rounded back to bf16/f32, a row's result no longer depends on how many other rows or masked
    keys share the batch, so a verified tree gives bit for bit what one-token decoding gives.
    """
    group = q.shape[0] // k.shape[0]
    k, v = k.double().repeat_interleave(group, 0), v.double().repeat_interleave(group, 0)
    scores = (q.double() @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1) @ v


class Block(nn.Module):
    def __init__(self, args: ModelArgs, w: dict[str, torch.Tensor], exact: bool) -> None:
        super().__init__()
        self.args = args
        self.exact = exact
        self.attn_norm = RMSNorm(w["attn_norm.weight"], args.rms_eps)
        self.ffn_norm = RMSNorm(w["ffn_norm.weight"], args.rms_eps)
        self.wqkv = torch.cat([w["attn_q.weight"], w["attn_k.weight"], w["attn_v.weight"]])
        self.bqkv = (torch.cat([w["attn_q.bias"], w["attn_k.bias"], w["attn_v.bias"]])
                     if args.qkv_bias else None)
        self.wo = w["attn_output.weight"]
        self.w_gate_up = torch.cat([w["ffn_gate.weight"], w["ffn_up.weight"]])
        self.w_down = w["ffn_down.weight"]

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                  cache: KVCache, slots: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.args
        t, kv_dim = x.shape[0], a.n_head_kv * a.head_dim
        qkv = self.linear(self.attn_norm(x), self.wqkv, self.bqkv)
        q, k, v = qkv.split([a.n_embd, kv_dim, kv_dim], dim=-1)
        q = apply_rope(q.view(t, a.n_head, a.head_dim), cos, sin, a.rope_neox)
        k = apply_rope(k.view(t, a.n_head_kv, a.head_dim), cos, sin, a.rope_neox)
        cache.k[layer, :, slots] = k.transpose(0, 1).to(cache.k.dtype)
        cache.v[layer, :, slots] = v.view(t, a.n_head_kv, a.head_dim).transpose(0, 1).to(cache.v.dtype)
        n_visible = mask.shape[1]  # only slots [0, n_visible) can be attended
        keys, values = cache.k[layer, :, :n_visible], cache.v[layer, :, :n_visible]
        if self.exact:
            y = exact_attention(q.transpose(0, 1), keys, values, mask).to(x.dtype)
        else:
            y = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys[None].to(q.dtype),
                                               values[None].to(q.dtype), attn_mask=mask[None, None],
                                               enable_gqa=a.n_head != a.n_head_kv)[0]
        return self.linear(y.transpose(0, 1).reshape(t, a.n_embd), self.wo)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.linear(self.ffn_norm(x), self.w_gate_up).chunk(2, dim=-1)
        return self.linear(F.silu(gate) * up, self.w_down)

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return batch_invariant_linear(x, w, b) if self.exact else F.linear(x, w, b)


def take_block(weights: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Remove block i's tensors from `weights`, named without the "blk.i." prefix."""
    prefix = f"blk.{i}."
    names = [name for name in weights if name.startswith(prefix)]
    return {name.removeprefix(prefix): weights.pop(name) for name in names}


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, weights: dict[str, torch.Tensor], n_slots: int,
                 exact: bool = True) -> None:
        """Build the model from GGUF-named tensors. Block tensors are taken out of `weights` as
        each block fuses them (q/k/v, gate/up), so the unfused ones are freed block by block and
        loading never holds the fused weights twice."""
        super().__init__()
        self.args = args
        self.embed = weights["token_embd.weight"]
        self.output = weights.get("output.weight", self.embed)  # tied when absent
        self.norm = RMSNorm(weights["output_norm.weight"], args.rms_eps)
        self.layers = nn.ModuleList(Block(args, take_block(weights, i), exact) for i in range(args.n_layer))
        device = self.embed.device
        cos, sin = rope_tables(args, n_slots, weights.get("rope_freqs.weight"))
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)
        self.cache = KVCache(args, n_slots, self.embed.dtype, device)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def sublayer_costs(self) -> np.ndarray:
        """Relative cost of each sublayer, [attn of layer 0..L-1, mlp 0..L-1]: weights read."""
        attn = [blk.wqkv.numel() + blk.wo.numel() for blk in self.layers]
        mlp = [blk.w_gate_up.numel() + blk.w_down.numel() for blk in self.layers]
        head = self.output.numel()
        return np.array(attn + mlp, float) / (sum(attn) + sum(mlp) + head)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                mask: torch.Tensor, skip: SkipSet = FULL, rows: torch.Tensor | None = None
                ) -> torch.Tensor | None:
        """Run `tokens` at rope `positions`, writing their K/V at cache `slots`.

        mask [tokens, n_visible] says which cache slots each token attends (its own included).
        Returns float32 logits for `rows` (default all); rows of length 0 skip the output head.
        """
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        x = self.embed[tokens]
        for i, layer in enumerate(self.layers):
            if i not in skip.attn:
                x = x + layer.attention(x, cos, sin, i, self.cache, slots, mask)
            if i not in skip.mlp:
                x = x + layer.mlp(x)
        if rows is not None:
            if rows.numel() == 0:
                return None
            x = x[rows]
        return self.layers[0].linear(self.norm(x), self.output).float()

    @torch.inference_mode()
    def exit_guesses(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                     mask: torch.Tensor, guess: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """[n_layer, tokens, ...]: `guess` of the logits the model would give if it exited after
        each layer (DEL), all exits in one pass."""
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        x = self.embed[tokens]
        exits = []
        for i, layer in enumerate(self.layers):
            x = x + layer.attention(x, cos, sin, i, self.cache, slots, mask)
            x = x + layer.mlp(x)
            exits.append(guess(layer.linear(self.norm(x), self.output).float()))
        return torch.stack(exits)


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.get_field(key)
    return f.contents() if f is not None else default


def read_args(reader: gguf.GGUFReader) -> ModelArgs:
    arch = str(_field(reader, "general.architecture", "unknown"))
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"the torch backend runs {', '.join(ARCHITECTURES)} models, not {arch!r}")
    neox, bias = ARCHITECTURES[arch]
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    n_embd = int(_field(reader, f"{arch}.embedding_length"))
    rope_dims = _field(reader, f"{arch}.rope.dimension_count", n_embd // n_head)
    if int(rope_dims) != n_embd // n_head or _field(reader, f"{arch}.attention.key_length") not in (
            None, n_embd // n_head):
        raise UnsupportedModelError("partial rotary or separate key lengths are not supported")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    return ModelArgs(
        arch=arch, vocab_size=len(tokens.data) if tokens is not None else 0, n_embd=n_embd,
        n_layer=int(_field(reader, f"{arch}.block_count")), n_head=n_head,
        n_head_kv=int(_field(reader, f"{arch}.attention.head_count_kv", n_head)),
        n_ff=int(_field(reader, f"{arch}.feed_forward_length")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_neox=neox, qkv_bias=bias)


def read_weights(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                 ) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """The model's shape and every tensor of a GGUF dequantised into `dtype` on `device`, one at
    a time (norms and rope factors stay float32)."""
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from None
    args = read_args(reader)
    weights: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        shape = [int(n) for n in reversed(t.shape)]  # GGUF lists dims innermost first
        array = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
        if not array.flags.writeable:  # an f32 tensor's data is a view of the mapped file
            array = array.copy()
        # norms stay f32 (as llama.cpp keeps them); rope factors must not be rounded
        f32 = array.ndim == 1 and not t.name.endswith(".bias")
        weights[t.name] = torch.from_numpy(array).to(device=device, dtype=torch.float32 if f32 else dtype)
    return args, weights


def load_gguf(path: str | Path, n_slots: int, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, exact: bool | None = None) -> Transformer:
    """Dequantise every tensor of a GGUF into `dtype` on `device` and build the model.

    exact (default: on CPU) makes a row's result independent of the batch it is in (float64
    attention, padded matmuls), so speculation reproduces one-token decoding bit for bit."""
    args, weights = read_weights(path, device, dtype)
    with torch.device(device):
        exact = str(device) == "cpu" if exact is None else exact
        return Transformer(args, weights, n_slots, exact).eval()
