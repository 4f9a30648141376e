"""Decode attention as a Pallas GPU kernel (Triton lowering; runs on CPU in interpret mode).

    o[b, h] = softmax_s(q[b, h] . k[layer, b, s, h // G] * scale) @ v[layer, b, s, h // G]   over s < lengths[b]

Design:
- Grid (B, KV): one program per row and KV head; it owns the G = H / KV query heads of that KV head (GQA without
  repeating keys: each key/value block is loaded once for the G heads). G is padded to a power of two outside the
  kernel (q is tiny); the cache itself is never padded or copied.
- The stacked cache [L, B, S, KV, D] is passed whole (no BlockSpec: a pointer into HBM) with the layer index as a
  one-element int32 array, so the decoder's layer scan needs no per-layer slice of the cache.
- Each program loops (`lax.fori_loop`) over only ceil(lengths[b] / BS) blocks of BS slots: the ragged rows of a
  batch each read their own filled slots, nothing beyond. Online softmax (running max, denominator and
  accumulator in float32); the last block is masked by slot < lengths[b].
- Scores and the value sum are broadcast-multiply-reduces, not dots: at decode G is small (1..8) and Triton's dot
  needs >= 16 rows; the kernel is bound by reading the cache anyway.
- The new token's key/value can be passed separately (`new=`): they seed the online softmax, so the decoder reads
  the cache before it writes the new slot (the write then only touches that slot).
- A row with lengths[b] == 0 and no new token returns zeros.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.errors import shape_error
from kernels.flute.pallas import _next_pow2, _pow2_divisor, lower_for_gpu

DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def unsupported(q_shape, cache_shape, dtype) -> str | None:
    """Why the kernel cannot take these shapes (None when it can). q [B, H, D] or [B, 1, H, D]; cache [L, B, S, KV, D]."""
    L, B, S, KV, D = cache_shape
    H = q_shape[-2]
    if D < 16 or D & (D - 1):
        return f"head_dim={D} (cache shape {tuple(cache_shape)}): needs a power of two >= 16"
    if S % 16:
        return f"cache length {S} (cache shape {tuple(cache_shape)}): needs a multiple of 16"
    if H % KV:
        return f"{H} query heads are not a multiple of {KV} kv heads (cache shape {tuple(cache_shape)})"
    if jnp.dtype(dtype) not in DTYPES:
        return f"cache dtype {jnp.dtype(dtype)}: needs one of float32, bfloat16, float16"
    return None


def _kernel(layer_ref, len_ref, q_ref, k_ref, v_ref, *rest, block_s: int, scale: float, bf16_round: bool):
    o_ref = rest[-1]
    b, h = pl.program_id(0), pl.program_id(1)
    layer = layer_ref[0]
    n = len_ref[b]
    f32 = jnp.float32

    def rd(x):
        x = x.astype(jnp.bfloat16) if bf16_round else x
        return x.astype(f32)

    q = rd(q_ref[...])  # [Gp, D]
    gp, d = q.shape

    def body(i, carry):
        m, l, acc = carry
        s0 = i * block_s
        kb = rd(k_ref[layer, b, pl.ds(s0, block_s), h, :])  # [BS, D]
        vb = rd(v_ref[layer, b, pl.ds(s0, block_s), h, :])
        s = jnp.sum(q[:, None, :] * kb[None, :, :], axis=-1) * scale  # [Gp, BS]
        slot = s0 + jax.lax.broadcasted_iota(jnp.int32, (gp, block_s), 1)
        s = jnp.where(slot < n, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[:, None])
        l = alpha * l + jnp.sum(p, axis=1)
        acc = alpha[:, None] * acc + jnp.sum(p[:, :, None] * vb[None, :, :], axis=1)
        return m_new, l, acc

    if len(rest) == 3:  # the new token (not yet in the cache) starts the online softmax
        kn, vn = rd(rest[0][...]), rd(rest[1][...])  # [1, D]
        m0 = jnp.sum(q * kn, axis=-1) * scale
        init = (m0, jnp.ones((gp,), f32), jnp.broadcast_to(vn, (gp, d)))
    else:
        init = (jnp.full((gp,), -1e30, f32), jnp.zeros((gp,), f32), jnp.zeros((gp, d), f32))
    nblocks = (n + block_s - 1) // block_s
    _, l, acc = jax.lax.fori_loop(0, nblocks, body, init)
    o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)[:, None]).astype(o_ref.dtype)


def decode_attention(q, k, v, layer, lengths, *, scale: float | None = None, bf16_round: bool = False,
                     new=None, block_s: int = 64, num_warps: int = 4, interpret: bool = False):
    """q [B, H, D]; k/v [L, B, S, KV, D]; layer int (traced is fine); lengths [B] filled slots per row; new = None
    or (k_new, v_new) [B, KV, D], the new token's key/value attended after the cached slots.
    Returns [B, H, D] float32 (bfloat16-rounded values when bf16_round)."""
    B, H, D = q.shape
    L, Bk, S, KV, Dk = k.shape
    why = unsupported(q.shape, k.shape, k.dtype)
    if why is None and (Bk != B or Dk != D or v.shape != k.shape):
        why = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match"
    if why is not None:
        raise shape_error(f"decode attention kernel: {why}")
    G = H // KV
    gp = max(_next_pow2(G), 1)
    qg = q.reshape(B, KV, G, D)
    if gp != G:
        qg = jnp.pad(qg, [(0, 0), (0, 0), (0, gp - G), (0, 0)])
    bs = _pow2_divisor(S, block_s)
    extra = () if new is None else tuple(jnp.asarray(t).reshape(B, KV, D) for t in new)
    scale = D ** -0.5 if scale is None else float(scale)
    kern = functools.partial(_kernel, block_s=bs, scale=scale, bf16_round=bf16_round)
    whole = pl.BlockSpec()  # the full array stays in HBM; the kernel indexes it
    kwargs = {}
    if not interpret:
        from jax.experimental.pallas import triton as pltriton

        kwargs["compiler_params"] = pltriton.CompilerParams(num_warps=num_warps, num_stages=1)
    out = pl.pallas_call(
        kern,
        grid=(B, KV),
        in_specs=[whole, whole, pl.BlockSpec((None, None, gp, D), lambda b, h: (b, h, 0, 0)), whole, whole]
        + [pl.BlockSpec((None, 1, D), lambda b, h: (b, h, 0))] * len(extra),
        out_specs=pl.BlockSpec((None, None, gp, D), lambda b, h: (b, h, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((B, KV, gp, D), jnp.float32),
        interpret=interpret,
        name="decode_attention",
        **kwargs,
    )(jnp.reshape(jnp.asarray(layer, jnp.int32), (1,)), jnp.asarray(lengths, jnp.int32), qg, k, v, *extra)
    out = out[:, :, :G].reshape(B, H, D)
    return out.astype(jnp.bfloat16).astype(jnp.float32) if bf16_round else out


def cross_lower(B: int, H: int, D: int, L: int, S: int, KV: int, dtype=jnp.bfloat16, with_new: bool = True, **kw):
    """Lower the kernel for an H100 on this (CPU) machine (see kernels.flute.pallas.lower_for_gpu)."""
    sd = jax.ShapeDtypeStruct
    fn = functools.partial(decode_attention, interpret=False, **kw)
    return lower_for_gpu(lambda q, k, v, layer, lengths, kn, vn: fn(q, k, v, layer, lengths,
                                                                     new=(kn, vn) if with_new else None),
                         sd((B, H, D), dtype), sd((L, B, S, KV, D), dtype), sd((L, B, S, KV, D), dtype),
                         sd((), jnp.int32), sd((B,), jnp.int32), sd((B, KV, D), dtype), sd((B, KV, D), dtype))


__all__ = ["decode_attention", "cross_lower", "unsupported"]
