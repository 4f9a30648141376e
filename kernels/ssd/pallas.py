"""Chunked SSD as a Pallas GPU kernel (Triton lowering; runs on CPU in interpret mode).

Same contract as `kernels.ssd.reference.ssd_scan` / `kernels.ssd.chunked.ssd_chunked`:
    (x [B, T, H, P], a [B, T, H], B/C [B, T, G, N], initial_state [B, H, P, N] or None)
        -> (y [B, T, H, P] float32, final_state [B, H, P, N] float32)

Design:
- Grid (B, H): one program per sequence and head walks its chunks in order (`lax.fori_loop`), carrying the
  [P, N] state in registers, so the inter-chunk recurrence costs no HBM round trip and no separate pass: each
  chunk does ssd_minimal's four steps at once:
      G = C_c B_c^T (masked by exp(A_l - A_s), s <= l);  y = (G * L) x_c + exp(A_l) C_c S^T
      S <- exp(A_last) S + (x_c * exp(A_last - A_l))^T B_c
  (A = the within-chunk cumulative sum of a, computed outside by XLA, as is the tail padding to a whole chunk).
- x, B, C and the outputs are whole-array refs indexed per chunk (`pl.ds`); grouped B/C (G < H) are read from
  group h // (H / G), never repeated in memory.
- Triton's dot needs every dimension >= 16 and power-of-two block shapes: Q (chunk), P (head dim) and N (state)
  must be powers of two >= 16 (`unsupported` says why not; the dispatcher in kernels/ssd then uses the XLA path).
- Backward: `ssd_pallas` is a `custom_vjp` whose backward pass is the VJP of the XLA chunked algorithm
  (recomputed from the inputs; no [T, T] matrix is stored). A Pallas backward kernel is not written yet.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.errors import shape_error
from kernels.flute.pallas import lower_for_gpu
from kernels.ssd.chunked import chunked_backward


def _pow2_ok(v: int) -> bool:
    return v >= 16 and not v & (v - 1)


def unsupported(x_shape, B_shape, chunk_size: int) -> str | None:
    """Why the kernel cannot take these shapes (None when it can)."""
    b, t, h, p = x_shape
    g, n = B_shape[2], B_shape[3]
    q = min(int(chunk_size), t)
    if not _pow2_ok(p):
        return f"head_dim P={p} (x shape {tuple(x_shape)}): needs a power of two >= 16"
    if not _pow2_ok(n):
        return f"state size N={n} (B shape {tuple(B_shape)}): needs a power of two >= 16"
    if not _pow2_ok(q):
        return f"chunk size {q} (chunk_size={chunk_size}, T={t}): needs a power of two >= 16"
    if h % g:
        return f"{h} heads are not a multiple of {g} B/C groups (B shape {tuple(B_shape)})"
    return None


def _kernel(x_ref, acum_ref, b_ref, c_ref, s0_ref, y_ref, sf_ref, *, q: int, nc: int, rep: int):
    bi, hi = pl.program_id(0), pl.program_id(1)
    gi = hi // rep
    f32 = jnp.float32
    row = jax.lax.broadcasted_iota(jnp.int32, (q, q), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (q, q), 1)
    causal = col <= row

    def body(c, s):
        t0 = c * q
        xc = x_ref[bi, pl.ds(t0, q), hi, :].astype(f32)  # [Q, P]
        bc = b_ref[bi, pl.ds(t0, q), gi, :].astype(f32)  # [Q, N]
        cc = c_ref[bi, pl.ds(t0, q), gi, :].astype(f32)  # [Q, N]
        ac = acum_ref[bi, hi, pl.ds(t0, q)]  # [Q] within-chunk cumulative log-decay
        a_last = acum_ref[bi, hi, t0 + q - 1]
        # intra-chunk: (C B^T * exp(A_l - A_s)) x, masked s <= l (masked before exp: no overflow above the diagonal)
        seg = jnp.where(causal, ac[:, None] - ac[None, :], -jnp.inf)
        gm = jax.lax.dot_general(cc, bc, (((1,), (1,)), ((), ())), preferred_element_type=f32) * jnp.exp(seg)
        y = jnp.dot(gm, xc, preferred_element_type=f32)
        # the state entering the chunk -> outputs
        y = y + jnp.exp(ac)[:, None] * jax.lax.dot_general(cc, s, (((1,), (1,)), ((), ())),
                                                           preferred_element_type=f32)
        y_ref[bi, pl.ds(t0, q), hi, :] = y.astype(y_ref.dtype)
        # state update: decay, then add this chunk's contribution
        xd = xc * jnp.exp(a_last - ac)[:, None]
        return jnp.exp(a_last) * s + jax.lax.dot_general(xd, bc, (((0,), (0,)), ((), ())),
                                                         preferred_element_type=f32)

    s = jax.lax.fori_loop(0, nc, body, s0_ref[bi, hi].astype(f32))
    sf_ref[bi, hi] = s.astype(sf_ref.dtype)


def _forward(x, a, B, C, chunk_size, initial_state, interpret, num_warps):
    why = unsupported(x.shape, B.shape, chunk_size)
    if why is not None:
        raise shape_error(f"SSD kernel: {why}")
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = min(int(chunk_size), t)
    f32 = jnp.float32
    pad = (-t) % q
    if pad:  # x = a = B = C = 0 in the tail leaves every real output and the final state unchanged
        padt = lambda v: jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        x, a, B, C = padt(x), padt(a), padt(B), padt(C)
    tp = t + pad
    nc = tp // q
    acum = jnp.cumsum(jnp.moveaxis(a.astype(f32), 1, 2).reshape(b, h, nc, q), axis=-1).reshape(b, h, tp)
    s0 = jnp.zeros((b, h, p, n), f32) if initial_state is None else initial_state.astype(f32)
    kwargs = {}
    if not interpret:
        from jax.experimental.pallas import triton as pltriton

        kwargs["compiler_params"] = pltriton.CompilerParams(num_warps=num_warps, num_stages=1)
    whole = pl.BlockSpec()
    y, final = pl.pallas_call(
        functools.partial(_kernel, q=q, nc=nc, rep=h // g),
        grid=(b, h),
        in_specs=[whole] * 5,
        out_specs=[whole, whole],
        out_shape=[jax.ShapeDtypeStruct((b, tp, h, p), f32), jax.ShapeDtypeStruct((b, h, p, n), f32)],
        interpret=interpret,
        name="ssd_chunked",
        **kwargs,
    )(x, acum, B, C, s0)
    return y[:, :t], final


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 6, 7))
def _ssd(x, a, B, C, chunk_size, initial_state, interpret, num_warps):
    return _forward(x, a, B, C, chunk_size, initial_state, interpret, num_warps)


def _ssd_fwd(x, a, B, C, chunk_size, initial_state, interpret, num_warps):
    return _forward(x, a, B, C, chunk_size, initial_state, interpret, num_warps), (x, a, B, C, initial_state)


def _ssd_bwd(chunk_size, interpret, num_warps, res, cts):
    return chunked_backward(chunk_size, res, cts)


_ssd.defvjp(_ssd_fwd, _ssd_bwd)


def ssd_pallas(x, a, B, C, chunk_size: int = 256, initial_state=None, *, interpret: bool = False,
               num_warps: int = 4):
    """The chunked SSD kernel (see the module docstring); differentiable (XLA chunked backward)."""
    return _ssd(x, a, B, C, int(chunk_size), initial_state, bool(interpret), int(num_warps))


def cross_lower(b: int, t: int, h: int, p: int, g: int, n: int, chunk_size: int = 64, dtype=jnp.float32,
                with_state: bool = True):
    """Lower the forward kernel for an H100 on this (CPU) machine (see kernels.flute.pallas.lower_for_gpu)."""
    sd = jax.ShapeDtypeStruct
    args = [sd((b, t, h, p), dtype), sd((b, t, h), jnp.float32), sd((b, t, g, n), dtype), sd((b, t, g, n), dtype)]
    if with_state:
        args.append(sd((b, h, p, n), jnp.float32))
    fn = lambda *v: ssd_pallas(*v[:4], chunk_size, v[4] if with_state else None)
    return lower_for_gpu(fn, *args)


__all__ = ["ssd_pallas", "cross_lower", "unsupported"]
