"""Chunked SSD as Pallas GPU kernels (Triton lowering; run on CPU in interpret mode), forward and backward.

Same contract as `kernels.ssd.reference.ssd_scan` / `kernels.ssd.chunked.ssd_chunked`:
    (x [B, T, H, P], a [B, T, H], B/C [B, T, G, N], initial_state [B, H, P, N] or None)
        -> (y [B, T, H, P] float32, final_state [B, H, P, N] float32)

Notation, per sequence and head, in chunks of Q tokens: A_l = the within-chunk cumulative sum of a (computed by
XLA, as is the zero tail padding to a whole chunk), A_q = its last entry, L[l, s] = exp(A_l - A_s) for s <= l
(0 above the diagonal), S_c = the [P, N] state entering chunk c (S_0 = initial_state; S_nc = final_state),
M = K * L with K = C B^T. Per chunk:
    y = M x + exp(A) * (C S_c^T)                                     (intra-chunk + incoming state)
    S_{c+1} = exp(A_q) S_c + (exp(A_q - A) * x)^T B                  (decay, then this chunk's contribution)

Forward (`_fwd_kernel`, grid (B, H)): one program walks its chunks in order (`lax.fori_loop`) with S in registers
and does both lines above per chunk.

Backward, given dy [T, P] and dF (the cotangent of the final state). The state gradients G_c = dL/dS_c obey the
reverse recurrence
    G_nc = dF,    G_c = exp(A_q) G_{c+1} + (exp(A) * dy)^T C          (S_c feeds chunk c's y and S_{c+1})
and d initial_state = G_0. With S_c and G_{c+1} known, each chunk's gradients are local (dM = dy x^T,
dK = dM * L, W = dM * M, and d = exp(A_q - A) the decay to the chunk end):
    dx = M^T dy + d * (B G_{c+1}^T)                                 [Q, P]
    dC = dK B + exp(A) * (dy S_c)                                   [Q, N]
    dB = dK^T C + d * (x G_{c+1})                                   [Q, N]
    dA_l = sum_s W[l, s] - sum_s W[s, l] + C_l . (exp(A) * (dy S_c))_l - u_l + [l = Q-1] (exp(A_q) <G_{c+1}, S_c>
           + sum_s u_s),    with u = rowsum(x * d * (B G_{c+1}^T))
(the first two terms are exp(A_l - A_s)'s dependence on A_l and A_s, the third the incoming state's output, the
last the state update's decays), and da_k = sum_{l >= k} dA_l within the chunk (A is a cumulative sum).
Three kernels, so that the heavy work is parallel over chunks (the forward's grid (B, H) leaves most of a GPU idle
at batch 1):
1. `_local_states_kernel`, grid (B, H, chunks): each chunk's own contribution to S_{c+1} and to G_c;
2. `_pass_kernel`, grid (B, H): the forward and reverse chunk scans of the two recurrences above (elementwise
   [P, N] work in registers; S_c are recomputed here from the saved inputs, nothing but the inputs is saved by
   the forward), writing S_c, G_{c+1} and G_0;
3. `_chunk_grad_kernel`, grid (B, H, chunks): dx, dB, dC and da of one chunk from S_c and G_{c+1}.
The result does not depend on the chunk size, so the backward uses its own (`bwd_chunk`, default 64: five
[Q, Q] float32 tiles must fit in registers). dB/dC are written per head and summed over each group's heads by
XLA (grouped B/C are read from group h // (H / G), never repeated in memory).

Triton's dot needs every dimension >= 16 and power-of-two block shapes: Q (chunk), P (head dim) and N (state) must
be powers of two >= 16, and x/B/C float32, bfloat16 or float16 (`unsupported` says why not; the dispatcher in
kernels/ssd then uses the XLA path). float32 inputs use IEEE float32 dots, narrower ones TF32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.errors import shape_error
from kernels.flute.pallas import lower_for_gpu

F32 = jnp.float32
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _pow2_ok(v: int) -> bool:
    return v >= 16 and not v & (v - 1)


def unsupported(x_shape, B_shape, chunk_size: int, dtype=None) -> str | None:
    """Why the kernel cannot take these shapes (None when it can). dtype: that of x/B/C, or a tuple of them (None:
    not checked)."""
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
    for dt in () if dtype is None else dtype if isinstance(dtype, (tuple, list)) else (dtype,):
        if jnp.dtype(dt) not in DTYPES:
            return (f"dtype {jnp.dtype(dt).name} (x shape {tuple(x_shape)}, B shape {tuple(B_shape)}): needs "
                    "float32, bfloat16 or float16")
    return None


def _dot(u, v, cu: int, cv: int, prec):
    """Contract u's axis cu with v's axis cv (2-D operands), float32 accumulation."""
    return jax.lax.dot_general(u, v, (((cu,), (cv,)), ((), ())), precision=prec, preferred_element_type=F32)


def _precision(dtype):
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _causal(q):
    row = jax.lax.broadcasted_iota(jnp.int32, (q, q), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (q, q), 1)
    return row, col, col <= row


def _fwd_kernel(x_ref, acum_ref, b_ref, c_ref, s0_ref, y_ref, sf_ref, *, q: int, nc: int, rep: int, prec):
    bi, hi = pl.program_id(0), pl.program_id(1)
    gi = hi // rep
    causal = _causal(q)[2]

    def body(c, s):
        t0 = c * q
        xc = x_ref[bi, pl.ds(t0, q), hi, :].astype(F32)  # [Q, P]
        bc = b_ref[bi, pl.ds(t0, q), gi, :].astype(F32)  # [Q, N]
        cc = c_ref[bi, pl.ds(t0, q), gi, :].astype(F32)  # [Q, N]
        ac = acum_ref[bi, hi, pl.ds(t0, q)]  # [Q] within-chunk cumulative log-decay
        a_last = acum_ref[bi, hi, t0 + q - 1]
        # intra-chunk: (C B^T * exp(A_l - A_s)) x, masked s <= l (masked before exp: no overflow above the diagonal)
        seg = jnp.where(causal, ac[:, None] - ac[None, :], -jnp.inf)
        y = _dot(_dot(cc, bc, 1, 1, prec) * jnp.exp(seg), xc, 1, 0, prec)
        y = y + jnp.exp(ac)[:, None] * _dot(cc, s, 1, 1, prec)  # the state entering the chunk -> outputs
        y_ref[bi, pl.ds(t0, q), hi, :] = y.astype(y_ref.dtype)
        # state update: decay, then add this chunk's contribution
        return jnp.exp(a_last) * s + _dot(xc * jnp.exp(a_last - ac)[:, None], bc, 0, 0, prec)

    s = jax.lax.fori_loop(0, nc, body, s0_ref[bi, hi].astype(F32))
    sf_ref[bi, hi] = s.astype(sf_ref.dtype)


def _local_states_kernel(x_ref, acum_ref, b_ref, c_ref, dy_ref, st_ref, gl_ref, *, q: int, prec):
    ac = acum_ref[...]
    a_last = acum_ref[q - 1]
    xd = x_ref[...].astype(F32) * jnp.exp(a_last - ac)[:, None]
    st_ref[...] = _dot(xd, b_ref[...].astype(F32), 0, 0, prec)  # this chunk's part of S_{c+1}
    gl_ref[...] = _dot(dy_ref[...] * jnp.exp(ac)[:, None], c_ref[...].astype(F32), 0, 0, prec)  # ... of G_c


def _pass_kernel(st_ref, gl_ref, alast_ref, s0_ref, gf_ref, s_ref, g_ref, g0_ref, *, nc: int):
    bi, hi = pl.program_id(0), pl.program_id(1)

    def forward(c, s):  # S_c (entering chunk c), then S_{c+1}
        s_ref[bi, hi, c] = s
        return jnp.exp(alast_ref[bi, hi, c]) * s + st_ref[bi, hi, c]

    def reverse(i, g):  # G_{c+1} (the gradient of the state leaving chunk c), then G_c
        c = nc - 1 - i
        g_ref[bi, hi, c] = g
        return jnp.exp(alast_ref[bi, hi, c]) * g + gl_ref[bi, hi, c]

    jax.lax.fori_loop(0, nc, forward, s0_ref[bi, hi])
    g0_ref[bi, hi] = jax.lax.fori_loop(0, nc, reverse, gf_ref[bi, hi])


def _chunk_grad_kernel(x_ref, acum_ref, b_ref, c_ref, dy_ref, s_ref, g_ref, dx_ref, db_ref, dc_ref, da_ref, *,
                       q: int, prec):
    x, bm, cm = (r[...].astype(F32) for r in (x_ref, b_ref, c_ref))  # [Q, P], [Q, N], [Q, N]
    dy, s, g = dy_ref[...], s_ref[...], g_ref[...]  # [Q, P], S_c [P, N], G_{c+1} [P, N]
    ac = acum_ref[...]
    a_last = acum_ref[q - 1]
    row, col, causal = _causal(q)
    lmat = jnp.exp(jnp.where(causal, ac[:, None] - ac[None, :], -jnp.inf))
    cb = _dot(cm, bm, 1, 1, prec)  # K = C B^T [Q, Q]
    m = cb * lmat
    dk = _dot(dy, x, 1, 1, prec) * lmat  # dK = dM * L
    w = dk * cb  # dM * M: the gradient of the exponent A_l - A_s
    dec = jnp.exp(a_last - ac)[:, None]
    dx_state = dec * _dot(bm, g, 1, 1, prec)  # [Q, P]
    dc_state = jnp.exp(ac)[:, None] * _dot(dy, s, 1, 0, prec)  # [Q, N]
    dx_ref[...] = _dot(m, dy, 0, 0, prec) + dx_state
    dc_ref[...] = _dot(dk, bm, 1, 0, prec) + dc_state
    db_ref[...] = _dot(dk, cm, 0, 0, prec) + dec * _dot(x, g, 1, 0, prec)
    u = jnp.sum(x * dx_state, axis=1)
    last = jnp.exp(a_last) * jnp.sum(g * s) + jnp.sum(u)
    d_acum = (jnp.sum(w, axis=1) - jnp.sum(w, axis=0) + jnp.sum(cm * dc_state, axis=1) - u
              + jnp.where(jax.lax.broadcasted_iota(jnp.int32, (q,), 0) == q - 1, last, 0.0))
    da_ref[...] = jnp.sum(jnp.where(col >= row, d_acum[None, :], 0.0), axis=1)  # da_k = sum_{l >= k} dA_l


def _params(interpret: bool, num_warps: int):
    if interpret:
        return {}
    from jax.experimental.pallas import triton as pltriton

    return {"compiler_params": pltriton.CompilerParams(num_warps=num_warps, num_stages=1)}


def _check(x, B, C, chunk_size):
    why = unsupported(x.shape, B.shape, chunk_size, (x.dtype, B.dtype, C.dtype))
    if why is not None:
        raise shape_error(f"SSD kernel: {why}")


def _chunked(q, *arrays):
    """Zero tail padding to a whole number of chunks of q (leaves every real output and the final state unchanged,
    and the gradients of the real inputs), plus the within-chunk cumulative log-decay [B, H, T'] of arrays[1]."""
    t = arrays[0].shape[1]
    pad = (-t) % q
    if pad:
        arrays = tuple(jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2)) for v in arrays)
    a = arrays[1]
    b, tp, h = a.shape
    acum = jnp.cumsum(jnp.moveaxis(a.astype(F32), 1, 2).reshape(b, h, tp // q, q), axis=-1).reshape(b, h, tp)
    return arrays, acum


def _forward(x, a, B, C, chunk_size, initial_state, interpret, num_warps):
    _check(x, B, C, chunk_size)
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = min(int(chunk_size), t)
    (x, a, B, C), acum = _chunked(q, x, a, B, C)
    tp = x.shape[1]
    s0 = jnp.zeros((b, h, p, n), F32) if initial_state is None else initial_state.astype(F32)
    whole = pl.BlockSpec()
    y, final = pl.pallas_call(
        functools.partial(_fwd_kernel, q=q, nc=tp // q, rep=h // g, prec=_precision(x.dtype)),
        grid=(b, h),
        in_specs=[whole] * 5,
        out_specs=[whole, whole],
        out_shape=[jax.ShapeDtypeStruct((b, tp, h, p), F32), jax.ShapeDtypeStruct((b, h, p, n), F32)],
        interpret=interpret, name="ssd_chunked", **_params(interpret, num_warps),
    )(x, acum, B, C, s0)
    return y[:, :t], final


def _backward(x, a, B, C, initial_state, dy, dfinal, q, interpret, num_warps):
    """The gradients of (x, a, B, C, initial_state) in three kernels (see the module docstring)."""
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    rep = h // g
    prec = _precision(x.dtype)
    (xp, _, Bp, Cp, dyp), acum = _chunked(q, x, a, B, C, dy.astype(F32))
    tp = xp.shape[1]
    nc = tp // q
    s0 = jnp.zeros((b, h, p, n), F32) if initial_state is None else initial_state.astype(F32)
    params = _params(interpret, num_warps)
    grad_params = _params(interpret, max(num_warps, 8) if q * max(p, n) >= 64 * 128 else num_warps)  # 5 [Q, Q] tiles
    sd = jax.ShapeDtypeStruct
    grid = (b, h, nc)
    x_spec = pl.BlockSpec((None, q, None, p), lambda bi, hi, ci: (bi, ci, hi, 0))
    bc_spec = pl.BlockSpec((None, q, None, n), lambda bi, hi, ci: (bi, ci, hi // rep, 0))
    head_n = pl.BlockSpec((None, q, None, n), lambda bi, hi, ci: (bi, ci, hi, 0))
    a_spec = pl.BlockSpec((None, None, q), lambda bi, hi, ci: (bi, hi, ci))
    st_spec = pl.BlockSpec((None, None, None, p, n), lambda bi, hi, ci: (bi, hi, ci, 0, 0))
    states = sd((b, h, nc, p, n), F32)
    st, gl = pl.pallas_call(
        functools.partial(_local_states_kernel, q=q, prec=prec), grid=grid,
        in_specs=[x_spec, a_spec, bc_spec, bc_spec, x_spec], out_specs=[st_spec, st_spec],
        out_shape=[states, states], interpret=interpret, name="ssd_bwd_local_states", **params,
    )(xp, acum, Bp, Cp, dyp)
    whole = pl.BlockSpec()
    a_last = acum.reshape(b, h, nc, q)[..., -1]
    s_in, g_out, g0 = pl.pallas_call(
        functools.partial(_pass_kernel, nc=nc), grid=(b, h), in_specs=[whole] * 5, out_specs=[whole] * 3,
        out_shape=[states, states, sd((b, h, p, n), F32)], interpret=interpret, name="ssd_bwd_state_pass", **params,
    )(st, gl, a_last, s0, dfinal.astype(F32))
    dx, db, dc, da = pl.pallas_call(
        functools.partial(_chunk_grad_kernel, q=q, prec=prec), grid=grid,
        in_specs=[x_spec, a_spec, bc_spec, bc_spec, x_spec, st_spec, st_spec],
        out_specs=[x_spec, head_n, head_n, a_spec],
        out_shape=[sd((b, tp, h, p), F32), sd((b, tp, h, n), F32), sd((b, tp, h, n), F32), sd((b, h, tp), F32)],
        interpret=interpret, name="ssd_bwd_chunk_grads", **grad_params,
    )(xp, acum, Bp, Cp, dyp, s_in, g_out)
    per_group = lambda v: v.reshape(b, tp, g, rep, n).sum(3)[:, :t]  # heads of one group share B/C
    ds0 = None if initial_state is None else g0.astype(initial_state.dtype)
    return (dx[:, :t].astype(x.dtype), jnp.moveaxis(da, 1, 2)[:, :t].astype(a.dtype),
            per_group(db).astype(B.dtype), per_group(dc).astype(C.dtype), ds0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 6, 7, 8))
def _ssd(x, a, B, C, chunk_size, initial_state, interpret, num_warps, bwd_chunk):
    return _forward(x, a, B, C, chunk_size, initial_state, interpret, num_warps)


def _ssd_fwd(x, a, B, C, chunk_size, initial_state, interpret, num_warps, bwd_chunk):
    out = _forward(x, a, B, C, chunk_size, initial_state, interpret, num_warps)
    return out, (x, a, B, C, initial_state)  # only the inputs: the backward recomputes the chunk states


def _ssd_bwd(chunk_size, interpret, num_warps, bwd_chunk, res, cts):
    x, a, B, C, s0 = res
    q = min(int(chunk_size), x.shape[1], int(bwd_chunk))
    return _backward(x, a, B, C, s0, cts[0], cts[1], q, interpret, num_warps)


_ssd.defvjp(_ssd_fwd, _ssd_bwd)


def ssd_pallas(x, a, B, C, chunk_size: int = 256, initial_state=None, *, interpret: bool = False,
               num_warps: int = 4, bwd_chunk: int = 64):
    """The chunked SSD kernel (see the module docstring); differentiable through the backward kernels.
    bwd_chunk: the backward's chunk size (a power of two >= 16; min(chunk_size, T) when smaller)."""
    _check(x, B, C, chunk_size)
    if not _pow2_ok(int(bwd_chunk)):
        raise shape_error(f"SSD kernel: bwd_chunk={bwd_chunk} needs a power of two >= 16")
    return _ssd(x, a, B, C, int(chunk_size), initial_state, bool(interpret), int(num_warps), int(bwd_chunk))


def cross_lower(b: int, t: int, h: int, p: int, g: int, n: int, chunk_size: int = 64, dtype=jnp.float32,
                with_state: bool = True, backward: bool = False):
    """Lower the forward kernel (backward=True: forward and the three backward kernels, through jax.grad) for an
    H100 on this (CPU) machine (see kernels.flute.pallas.lower_for_gpu)."""
    sd = jax.ShapeDtypeStruct
    args = [sd((b, t, h, p), dtype), sd((b, t, h), jnp.float32), sd((b, t, g, n), dtype), sd((b, t, g, n), dtype)]
    if with_state:
        args.append(sd((b, h, p, n), jnp.float32))
    fn = lambda *v: ssd_pallas(*v[:4], chunk_size, v[4] if with_state else None)
    if backward:
        fwd = fn
        loss = lambda *v: sum(jnp.sum(o) for o in fwd(*v))
        fn = jax.grad(loss, argnums=tuple(range(len(args))))
    return lower_for_gpu(fn, *args)


__all__ = ["ssd_pallas", "cross_lower", "unsupported"]
