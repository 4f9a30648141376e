"""Reference attention (pure JAX, materialises the [T, S] scores) and the mask every path shares.

Layout: q [B, T, H, D], k/v [B, S, KV, D] with H a multiple of KV (grouped-query: query head h reads KV head
h // (H // KV)). A query at position q_pos attends a key at k_pos when
    (not causal or k_pos <= q_pos)  and  q_seg == k_seg
(segment ids [B, T] / [B, S]: packed documents; a key padding mask is a key segment of -1). A query row whose keys
are all masked gets the mean of all S values (a uniform softmax over the masked scores), never NaN: the same
contract as jaxlm.nn.attention.attend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG = float(jnp.finfo(jnp.float32).min)  # the reference's fill for masked scores
MASKED = -1e30  # the kernels' running-max start / lse marker of a query row with no key to attend


def keep_mask(q_pos, k_pos, q_seg, k_seg, causal: bool):
    """[B, T, S] bool (True = attend) or None. Any argument may be None (no constraint from it)."""
    mask = None
    if causal:
        mask = k_pos[:, None, :] <= q_pos[:, :, None]
    if q_seg is not None or k_seg is not None:
        if q_seg is None:  # key padding only: every query is in segment 0
            m = (k_seg == 0)[:, None, :]
        else:
            m = q_seg[:, :, None] == k_seg[:, None, :]
        mask = m if mask is None else mask & m
    return mask


def attention(q, k, v, q_pos=None, k_pos=None, q_seg=None, k_seg=None, *, causal: bool = True,
              scale: float | None = None):
    """The reference: softmax(q k^T * scale, masked) v, float32 scores; returns q.dtype."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    qg = q.reshape(B, T, KV, H // KV, D)
    s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    mask = keep_mask(q_pos, k_pos, q_seg, k_seg, causal)
    if mask is not None:
        s = jnp.where(mask[:, None, None], s, NEG)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o.reshape(B, T, H, D).astype(q.dtype)


def fill_empty_rows(o, lse, v):
    """Rows a blockwise kernel found empty (lse == MASKED marker, output 0) get the mean of all values, as the
    reference's uniform softmax over masked scores gives. o [B,T,H,D], lse [B,H,T], v [B,S,KV,D]."""
    B, T, H, D = o.shape
    KV = v.shape[2]
    empty = jnp.transpose(lse, (0, 2, 1)) <= MASKED / 2  # [B, T, H]
    mean_v = jnp.mean(v.astype(jnp.float32), axis=1)  # [B, KV, D]
    mean_v = jnp.repeat(mean_v, H // KV, axis=1)[:, None]  # [B, 1, H, D] (tiny: no [B, S, H, D] copy)
    return jnp.where(empty[..., None], mean_v.astype(o.dtype), o)


__all__ = ["attention", "keep_mask", "fill_empty_rows", "NEG", "MASKED"]
