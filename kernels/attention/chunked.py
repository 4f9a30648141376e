"""Memory-efficient attention in plain XLA (the CPU path; any backend): blockwise over the keys with an online
softmax, and a custom backward that recomputes the scores block by block, so neither pass holds a [T, S] matrix:
activation memory is O(T * block_k) per head instead of O(T * S).

    o, lse = chunked_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, causal=, scale=, block_k=)

q [B,T,H,D], k/v [B,S,KV,D] (grouped-query: KV heads are never repeated); q_pos/q_seg [B,T], k_pos/k_seg [B,S] int32
(see kernels/attention/reference.py for the mask). S is padded to a multiple of block_k with masked keys. lse [B,H,T]
is the row log-sum-exp (reference.MASKED for a row with nothing to attend; its output is 0, see
reference.fill_empty_rows). With causal=True, key blocks that lie wholly after every query position are skipped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.attention.reference import MASKED

PAD_SEG = -2  # segment of padded keys: never equal to a query's segment (>= 0) or the key-padding -1


def _pad_keys(k, v, k_pos, k_seg, block_k):
    S = k.shape[1]
    pad = -S % block_k
    if not pad:
        return k, v, k_pos, k_seg
    pw = ((0, 0), (0, pad), (0, 0), (0, 0))
    return (jnp.pad(k, pw), jnp.pad(v, pw), jnp.pad(k_pos, ((0, 0), (0, pad))),
            jnp.pad(k_seg, ((0, 0), (0, pad)), constant_values=PAD_SEG))


def _block(x, j, c):
    return jax.lax.dynamic_slice_in_dim(x, j * c, c, axis=1)


def _scores(qg, kc, q_pos, kp, q_seg, ks, causal, scale):
    """qg [B,T,KV,G,D], kc [B,C,KV,D] -> masked scores [B,KV,G,T,C] float32 and the keep mask [B,1,1,T,C]."""
    s = jnp.einsum("btkgd,bckd->bkgtc", qg, kc, preferred_element_type=jnp.float32) * scale
    keep = q_seg[:, :, None] == ks[:, None, :]
    if causal:
        keep = keep & (kp[:, None, :] <= q_pos[:, :, None])
    keep = keep[:, None, None]
    return jnp.where(keep, s, MASKED), keep


def _visit(q_pos, kp, causal, compute, carry):
    """Run compute(carry) unless causal masking removes the whole key block."""
    if not causal:
        return compute(carry)
    return jax.lax.cond(jnp.min(kp) <= jnp.max(q_pos), compute, lambda c: c, carry)


def _forward(q, k, v, q_pos, k_pos, q_seg, k_seg, causal, scale, block_k):
    B, T, H, D = q.shape
    KV = k.shape[2]
    G = H // KV
    qg = q.reshape(B, T, KV, G, D)
    nb = k.shape[1] // block_k

    def body(j, carry):
        kp, ks = _block(k_pos, j, block_k), _block(k_seg, j, block_k)

        def compute(carry):
            m, l, acc = carry
            s, keep = _scores(qg, _block(k, j, block_k), q_pos, kp, q_seg, ks, causal, scale)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.where(keep, jnp.exp(s - m_new[..., None]), 0.0)
            alpha = jnp.exp(m - m_new)
            vc = _block(v, j, block_k)
            pv = jnp.einsum("bkgtc,bckd->bkgtd", p.astype(v.dtype), vc, preferred_element_type=jnp.float32)
            return m_new, l * alpha + jnp.sum(p, axis=-1), acc * alpha[..., None] + pv

        return _visit(q_pos, kp, causal, compute, carry)

    init = (jnp.full((B, KV, G, T), MASKED, jnp.float32), jnp.zeros((B, KV, G, T), jnp.float32),
            jnp.zeros((B, KV, G, T, D), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, nb, body, init)
    o = acc / jnp.where(l > 0, l, 1.0)[..., None]
    lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), MASKED)
    o = jnp.transpose(o, (0, 3, 1, 2, 4)).reshape(B, T, H, D).astype(q.dtype)
    return o, lse.reshape(B, H, T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _attn(q, k, v, q_pos, k_pos, q_seg, k_seg, causal, scale, block_k):
    return _forward(q, k, v, q_pos, k_pos, q_seg, k_seg, causal, scale, block_k)


def _attn_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, causal, scale, block_k):
    o, lse = _forward(q, k, v, q_pos, k_pos, q_seg, k_seg, causal, scale, block_k)
    return (o, lse), (q, k, v, q_pos, k_pos, q_seg, k_seg, o, lse)


def _attn_bwd(causal, scale, block_k, res, cts):
    q, k, v, q_pos, k_pos, q_seg, k_seg, o, lse = res
    do = cts[0]
    B, T, H, D = q.shape
    KV = k.shape[2]
    G = H // KV
    qg = q.reshape(B, T, KV, G, D)
    dog = do.reshape(B, T, KV, G, D)
    lse_g = lse.reshape(B, KV, G, T)
    delta = jnp.einsum("btkgd,btkgd->bkgt", dog.astype(jnp.float32), o.reshape(B, T, KV, G, D).astype(jnp.float32))
    nb = k.shape[1] // block_k

    def body(j, carry):
        kp, ks = _block(k_pos, j, block_k), _block(k_seg, j, block_k)

        def compute(carry):
            dq, dk, dv = carry
            kc, vc = _block(k, j, block_k), _block(v, j, block_k)
            s, keep = _scores(qg, kc, q_pos, kp, q_seg, ks, causal, scale)
            p = jnp.where(keep, jnp.exp(s - lse_g[..., None]), 0.0)
            dv_c = jnp.einsum("bkgtc,btkgd->bckd", p.astype(do.dtype), dog, preferred_element_type=jnp.float32)
            dp = jnp.einsum("btkgd,bckd->bkgtc", dog, vc, preferred_element_type=jnp.float32)
            ds = p * (dp - delta[..., None])
            dq = dq + jnp.einsum("bkgtc,bckd->btkgd", ds.astype(k.dtype), kc, preferred_element_type=jnp.float32)
            dk_c = jnp.einsum("bkgtc,btkgd->bckd", ds.astype(q.dtype), qg, preferred_element_type=jnp.float32)
            dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_c * scale, j * block_k, axis=1)
            dv = jax.lax.dynamic_update_slice_in_dim(dv, dv_c, j * block_k, axis=1)
            return dq, dk, dv

        return _visit(q_pos, kp, causal, compute, carry)

    init = (jnp.zeros((B, T, KV, G, D), jnp.float32), jnp.zeros(k.shape, jnp.float32),
            jnp.zeros(v.shape, jnp.float32))
    dq, dk, dv = jax.lax.fori_loop(0, nb, body, init)
    dq = (dq * scale).reshape(B, T, H, D)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


_attn.defvjp(_attn_fwd, _attn_bwd)


def chunked_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, *, causal: bool, scale: float, block_k: int = 512):
    """Blockwise attention; returns (o [B,T,H,D] in q.dtype, lse [B,H,T] float32). Differentiable in q, k, v."""
    S = k.shape[1]
    block_k = max(1, min(int(block_k), S))
    kp, vp, k_pos_p, k_seg_p = _pad_keys(k, v, k_pos, k_seg, block_k)
    o, lse = _attn(q, kp, vp, q_pos, k_pos_p, q_seg, k_seg_p, bool(causal), float(scale), block_k)
    return o, lse


__all__ = ["chunked_attention", "PAD_SEG"]
