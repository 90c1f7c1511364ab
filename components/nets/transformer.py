"""GPT-style causal transformer backbone (robomimic's BC-Transformer: ``MIMO_Transformer`` + ``GPT_Backbone``).

One token per timestep: the encoded observation ``[B, T, input_dim]`` is projected to ``embed_dim``, a timestep
embedding is added (learned ``nn.Parameter`` table, sinusoidal encoding, or ``nn.Embedding``), then LayerNorm and
dropout, then ``num_layers`` pre-LN causal self-attention blocks and a final LayerNorm. The output is
``[B, T, embed_dim]``; step ``t`` only sees steps ``<= t``. Any extra leading dims before ``T`` are flattened into
the batch and restored.

Differences from robomimic worth knowing: a sequence shorter than ``context_length`` is accepted with every
embedding type (the first ``T`` timestep embeddings are used; robomimic's learned table only broadcasts at full
length), and attention runs through ``scaled_dot_product_attention`` (fused kernels where available).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GEGLU(nn.Module):
    """Gated GELU: splits the last dim in two halves ``(value, gate)`` and returns ``value * gelu(gate)``."""

    def forward(self, x):
        value, gate = x.chunk(2, dim=-1)
        return value * F.gelu(gate)


_ACTIVATIONS = {"gelu": (nn.GELU, 1), "geglu": (GEGLU, 2)}  # name -> (module, width multiplier of 1st proj)


def sinusoidal_table(length: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``[length, dim]`` sin/cos positional encoding: even columns ``sin(p * w_i)``, odd columns ``cos(p * w_i)``
    with ``w_i = base^(-2i / dim)``."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))
    angles = pos * freqs  # [length, ceil(dim / 2)]
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: fused bias-free qkv projection, causal SDPA with attention dropout while
    training, output projection and dropout."""

    def __init__(self, embed_dim: int, num_heads: int, context_length: int, attn_dropout: float = 0.1,
                 output_dropout: float = 0.1):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim, self.num_heads, self.context_length = embed_dim, num_heads, context_length
        self.head_dim = embed_dim // num_heads
        self.attn_dropout = float(attn_dropout)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(output_dropout)

    def forward(self, x):
        B, T, D = x.shape
        if T > self.context_length:
            raise ValueError(f"sequence length {T} exceeds context_length {self.context_length}")
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3x[B,H,T,d]
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0,
                                           is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.proj_drop(self.proj(y))


class SelfAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))`` then ``x + MLP(LN(x))``; MLP hidden width ``4 * D``."""

    def __init__(self, embed_dim: int, num_heads: int, context_length: int, attn_dropout: float = 0.1,
                 block_output_dropout: float = 0.1, activation: str = "gelu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown transformer activation {activation!r}: expected one of {sorted(_ACTIVATIONS)}")
        act_cls, mult = _ACTIVATIONS[activation]
        self.ln1 = nn.LayerNorm(embed_dim)
        self.attn = CausalSelfAttention(embed_dim, num_heads, context_length, attn_dropout, block_output_dropout)
        self.ln2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, 4 * embed_dim * mult),
            act_cls(),
            nn.Linear(4 * embed_dim, embed_dim),
            nn.Dropout(block_output_dropout),
        )

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerBackbone(nn.Module):
    """Observation tokens ``[..., T, input_dim]`` -> causal transformer features ``[..., T, embed_dim]``.

    ``T`` may be anything from 1 to ``context_length``.
    """

    recurrent = False

    def __init__(self, input_dim: int, embed_dim: int = 512, num_layers: int = 6, num_heads: int = 8,
                 context_length: int = 10, emb_dropout: float = 0.1, attn_dropout: float = 0.1,
                 block_output_dropout: float = 0.1, sinusoidal_embedding: bool = False, activation: str = "gelu",
                 nn_parameter_for_timesteps: bool = True):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"transformer embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown transformer activation {activation!r}: expected one of {sorted(_ACTIVATIONS)}")
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        self.input_dim, self.embed_dim, self.context_length = input_dim, embed_dim, context_length
        self.output_dim = embed_dim

        self.token_proj = nn.Linear(input_dim, embed_dim)
        if nn_parameter_for_timesteps:
            self.timestep_mode = "parameter"
            self.timestep_emb = nn.Parameter(torch.zeros(1, context_length, embed_dim))
        elif sinusoidal_embedding:
            self.timestep_mode = "sinusoidal"
            self.register_buffer("timestep_emb", sinusoidal_table(context_length, embed_dim), persistent=False)
        else:
            self.timestep_mode = "embedding"
            self.timestep_emb = nn.Embedding(context_length, embed_dim)
        self.emb_ln = nn.LayerNorm(embed_dim)
        self.emb_drop = nn.Dropout(emb_dropout)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(embed_dim, num_heads, context_length, attn_dropout, block_output_dropout, activation)
            for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(embed_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def timestep_embeddings(self, T: int) -> torch.Tensor:
        """The embeddings of timesteps ``0..T-1``, shape ``[T, embed_dim]``."""
        if self.timestep_mode == "parameter":
            return self.timestep_emb[0, :T]
        if self.timestep_mode == "sinusoidal":
            return self.timestep_emb[:T]
        return self.timestep_emb.weight[:T]

    def forward(self, x):
        if x.dim() < 3:
            raise ValueError(f"the transformer backbone needs a [B, T, D] sequence of observation tokens, got shape "
                             f"{tuple(x.shape)} (use frame-stacked windows: train.frame_stack = context_length)")
        *lead, T, D = x.shape
        if T > self.context_length:
            raise ValueError(f"sequence length {T} exceeds the transformer context_length {self.context_length}")
        if D != self.input_dim:
            raise ValueError(f"expected token features of size {self.input_dim}, got {D}")
        x = x.reshape(-1, T, D)
        h = self.token_proj(x) + self.timestep_embeddings(T).to(x.dtype)
        h = self.emb_drop(self.emb_ln(h))
        for block in self.blocks:
            h = block(h)
        h = self.ln_f(h)
        return h.reshape(*lead, T, self.embed_dim)
