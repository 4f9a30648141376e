"""Pandora's adapter: a Q-Former (Li et al. 2023, BLIP-2) from the LLM's query states to the video model's context.

`num_out` learnable output queries (Pandora: 77, the length of the text context its video model was trained with;
zero-initialised as in the original) pass through `depth` blocks of self-attention among themselves,
cross-attention to the LLM's hidden states at the query positions (projected from the LLM width to the adapter
width), and an MLP; a final norm and projection give tokens of the video model's cross-attention width. Because
zero queries are all alike, a small random position embedding is added to them (otherwise self-attention and
the shared MLP would keep every output token identical).

Input standardization (`in_shift`, `in_scale`; ActNorm, Kingma & Dhariwal 2018): a per-feature affine map of the
LLM's states before the projection, identity at init, set from data by `init_input_norm` (mean 0, std 1 per
feature over a calibration batch) and trained as ordinary parameters afterwards. It is needed because a decoder's
residual stream carries a few massive, nearly input-independent features (SmolLM2's first 4 layers: |mean| up to
21 in one feature of the final-normed query states, while the median feature varies by 0.25 across actions); through
a plain projection and LayerNorm they drown the action-dependent part, and the adapter learned only the targets'
mean. Measured on frozen query states: a ridge regression reads the stage-(a) action tokens with held-out R^2 0.99
from standardized features; the adapter without standardization stays at normalized MSE ~1.0 for 300 steps, with
it 0.05 (docs/pandora.md).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ShapeError
from jaxlm.nn.attention import CrossAttention
from jaxlm.nn.linear import Linear, param
from jaxlm.nn.mlp import MLP
from jaxlm.nn.norms import Norm


class QFormerBlock(nnx.Module):
    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.norm1, self.norm2, self.norm3 = Norm(dim, "layer"), Norm(dim, "layer"), Norm(dim, "layer")
        self.self_attn = CrossAttention(dim, heads, rngs=rngs)
        self.cross_attn = CrossAttention(dim, heads, rngs=rngs)
        self.mlp = MLP(dim, 4 * dim, "gelu", bias=True, rngs=rngs)

    def __call__(self, q, memory, memory_mask=None):
        h = self.norm1(q)
        q = q + self.self_attn(h, h)
        q = q + self.cross_attn(self.norm2(q), memory, memory_mask)
        return q + self.mlp(self.norm3(q))


class QFormerAdapter(nnx.Module):
    """states [B, N, in_dim] (the LLM's last hidden layer at the N query positions) -> [B, num_out, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int, *, num_out: int = 77, dim: int = 768, depth: int = 2,
                 heads: int = 8, rngs: nnx.Rngs):
        self.in_dim = in_dim
        self.in_shift = param(None, (in_dim,), (None,), init="zeros")
        self.in_scale = param(None, (in_dim,), (None,), init="ones")
        self.queries = param(None, (num_out, dim), (None, "embed"), init="zeros")
        self.query_pos = param(rngs, (num_out, dim), (None, "embed"), 0.02)
        self.in_proj = Linear(in_dim, dim, (None, "embed"), bias=True, rngs=rngs)
        self.in_norm = Norm(dim, "layer")
        self.blocks = nnx.List([QFormerBlock(dim, heads, rngs=rngs) for _ in range(depth)])
        self.out_norm = Norm(dim, "layer")
        self.out_proj = Linear(dim, out_dim, ("embed", None), bias=True, rngs=rngs)

    def __call__(self, states, mask=None):
        if states.ndim != 3 or states.shape[-1] != self.in_dim:
            raise ShapeError(f"QFormerAdapter: states has shape {tuple(states.shape)}; expected [B, N, "
                             f"{self.in_dim}] (the LLM's hidden size)")
        x = (states.astype(jnp.float32) - self.in_shift[...]) * self.in_scale[...]
        mem = self.in_norm(self.in_proj(x))
        B = states.shape[0]
        q = jnp.broadcast_to((self.queries[...] + self.query_pos[...])[None], (B,) + self.queries.shape)
        for blk in self.blocks:
            q = blk(q, mem, mask)
        return self.out_proj(self.out_norm(q))

    def init_input_norm(self, states, rel_floor: float = 0.01):
        """Data-dependent init of the input standardization from states [B, N, in_dim] (in place): shift = the
        per-feature mean over the B x N tokens, scale = 1 / (std + rel_floor x mean std), so features that hardly
        vary are not amplified without bound. Returns (shift, scale)."""
        if states.ndim != 3 or states.shape[-1] != self.in_dim:
            raise ShapeError(f"QFormerAdapter.init_input_norm: states has shape {tuple(states.shape)}; expected "
                             f"[B, N, {self.in_dim}]")
        x = jnp.asarray(states, jnp.float32).reshape(-1, self.in_dim)
        mu, sd = x.mean(0), x.std(0)
        scale = 1.0 / (sd + rel_floor * jnp.maximum(sd.mean(), 1e-12))
        self.in_shift[...] = mu
        self.in_scale[...] = scale
        return mu, scale


__all__ = ["QFormerAdapter", "QFormerBlock"]
