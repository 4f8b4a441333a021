"""A Llama in plain PyTorch (RMSNorm, rotary, grouped-query attention, SwiGLU) for the demo model.

The rotary embedding rotates adjacent pairs (x[2i], x[2i+1]), which is llama.cpp's "normal" rope
mode for LLM_ARCH_LLAMA, so Q and K export without any permutation. The output projection is
tied to the token embedding and written to the GGUF twice. Requires torch (the `torch` extra).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from localspec.gguf_export import LlamaConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(config: LlamaConfig, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [n_pos, head_dim // 2]: pair i turns by pos * theta^(-2i / head_dim)."""
    half = config.head_dim // 2
    freqs = config.rope_theta ** (-torch.arange(half, dtype=torch.float64) * 2 / config.head_dim)
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]; rotate each adjacent pair (x[2i], x[2i+1])."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        kv_dim = config.head_dim * config.n_head_kv
        self.wq = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.wk = nn.Linear(config.n_embd, kv_dim, bias=False)
        self.wv = nn.Linear(config.n_embd, kv_dim, bias=False)
        self.wo = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, c.n_head, c.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, c.n_head_kv, c.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, c.n_head_kv, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = c.n_head // c.n_head_kv  # query head h reads kv head h // group, as in llama.cpp
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, c.n_embd))


class FeedForward(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.n_ff, bias=False)
        self.up = nn.Linear(config.n_embd, config.n_ff, bias=False)
        self.down = nn.Linear(config.n_ff, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.rms_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.n_embd, config.rms_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.rms_eps)
        cos, sin = rope_tables(config, config.n_ctx)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for block in self.blocks:  # scale the residual writes down with depth (GPT-2 style)
            std = 0.02 / (2 * config.n_layer) ** 0.5
            nn.init.normal_(block.attn.wo.weight, std=std)
            nn.init.normal_(block.ffn.down.weight, std=std)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [batch, seq] -> logits [batch, seq, vocab]."""
        t = tokens.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return F.linear(self.norm(x), self.embed.weight)

    def gguf_weights(self) -> dict[str, np.ndarray]:
        """The weights under llama.cpp's tensor names, [out, in] layout, float32."""

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().to(torch.float32).cpu().numpy().copy()

        weights = {
            "token_embd.weight": arr(self.embed.weight),
            "output_norm.weight": arr(self.norm.weight),
            "output.weight": arr(self.embed.weight),
        }
        for i, block in enumerate(self.blocks):
            weights |= {
                f"blk.{i}.attn_norm.weight": arr(block.attn_norm.weight),
                f"blk.{i}.attn_q.weight": arr(block.attn.wq.weight),
                f"blk.{i}.attn_k.weight": arr(block.attn.wk.weight),
                f"blk.{i}.attn_v.weight": arr(block.attn.wv.weight),
                f"blk.{i}.attn_output.weight": arr(block.attn.wo.weight),
                f"blk.{i}.ffn_norm.weight": arr(block.ffn_norm.weight),
                f"blk.{i}.ffn_gate.weight": arr(block.ffn.gate.weight),
                f"blk.{i}.ffn_up.weight": arr(block.ffn.up.weight),
                f"blk.{i}.ffn_down.weight": arr(block.ffn.down.weight),
            }
        return weights


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
