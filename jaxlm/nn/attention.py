"""Multi-head / grouped-query causal self-attention with rotary embeddings and an optional KV cache.

A cache for one layer is a pair (k, v), each [B, S, KV, D], plus `lengths` [B]: the number of slots already
written per row. New keys/values are written at slots lengths[b] .. lengths[b]+T-1 and every query at slot
p attends to the slots <= p. Rows of a batch may therefore hold prompts of different lengths (right-padded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.nn.linear import Linear
from jaxlm.nn.rope import apply_rope, rope_angles
from jaxlm.sharding import shard


def write_cache(cache, new, lengths):
    """cache [B, S, KV, D], new [B, T, KV, D]: write new at slot lengths[b] of each row."""
    upd = lambda c, n, i: jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (i, 0, 0))
    return jax.vmap(upd)(cache, new, lengths)


def attend(q, k, v, q_pos, k_pos, scale: float, bf16_round: bool = False):
    """q [B,T,H,D], k/v [B,S,KV,D]; q_pos [B,T], k_pos [B,S] slot positions; causal mask k_pos <= q_pos."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    if bf16_round:  # MobiLlama reference: flash-attn on bfloat16 inputs
        q, k, v = (t.astype(jnp.bfloat16).astype(jnp.float32) for t in (q, k, v))
    qg = q.reshape(B, T, KV, H // KV, D)
    s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    mask = (k_pos[:, None, :] <= q_pos[:, :, None])[:, None, None]  # [B,1,1,T,S]
    s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    o = o.reshape(B, T, H, D)
    if bf16_round:
        o = o.astype(jnp.bfloat16)
    return o.astype(q.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        d, hd = cfg.hidden_size, cfg.head_dim
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(std=cfg.init_std, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.q = Linear(d, cfg.num_heads * hd, ("embed", "heads"), bias=cfg.qkv_bias, **kw)
        self.k = Linear(d, cfg.num_kv_heads * hd, ("embed", "kv"), bias=cfg.qkv_bias, **kw)
        self.v = Linear(d, cfg.num_kv_heads * hd, ("embed", "kv"), bias=cfg.qkv_bias, **kw)
        self.o = Linear(cfg.num_heads * hd, d, ("heads", "embed"), bias=cfg.out_bias, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.rotary_dim, self.rope_style, self.theta = cfg.rot_dim, cfg.rope_style, cfg.rope_theta
        self.scale = float(hd) ** (-cfg.attn_scale_power)
        self.bf16_round = cfg.attn_bf16_round

    def qkv(self, x, positions):
        B, T, _ = x.shape
        q = self.q(x).reshape(B, T, self.num_heads, self.head_dim)
        k = self.k(x).reshape(B, T, self.num_kv_heads, self.head_dim)
        v = self.v(x).reshape(B, T, self.num_kv_heads, self.head_dim)
        cos, sin = rope_angles(positions, self.rotary_dim, self.theta)
        q = apply_rope(q, cos, sin, self.rotary_dim, self.rope_style)
        k = apply_rope(k, cos, sin, self.rotary_dim, self.rope_style)
        q = shard(q, ("batch", "length", "heads", "head_dim"))
        k = shard(k, ("batch", "length", "kv", "head_dim"))
        v = shard(v, ("batch", "length", "kv", "head_dim"))
        return q, k, v

    def __call__(self, x, positions, kv_cache=None, lengths=None, return_probs: bool = False):
        """x [B,T,D]; positions [B,T]. With kv_cache=(k,v) and lengths [B], returns (out, (k,v))."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x, positions)
        if kv_cache is None:
            k_all, v_all, k_pos = k, v, positions
        else:
            k_all = write_cache(kv_cache[0], k, lengths)
            v_all = write_cache(kv_cache[1], v, lengths)
            # slot index == position: the caller passes positions = lengths[:, None] + arange(T)
            k_pos = jnp.broadcast_to(jnp.arange(k_all.shape[1], dtype=jnp.int32), (B, k_all.shape[1]))
        o = attend(q, k_all.astype(q.dtype), v_all.astype(q.dtype), positions, k_pos, self.scale, self.bf16_round)
        out = self.o(o.reshape(B, T, self.num_heads * self.head_dim))
        return out, (None if kv_cache is None else (k_all, v_all))

    def probs(self, x, positions):
        """Attention probability matrices [B, H, T, T] (MOHAWK stage 1 targets)."""
        B, T, _ = x.shape
        q, k, _ = self.qkv(x, positions)
        G = self.num_heads // self.num_kv_heads
        k = jnp.repeat(k, G, axis=2)
        s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * self.scale
        mask = positions[:, None, None, :] <= positions[:, None, :, None]
        return jax.nn.softmax(jnp.where(mask, s, jnp.finfo(jnp.float32).min), axis=-1)
