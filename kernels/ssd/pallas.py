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

Forward, two variants (`forward=`):
- "sequential" (default; `_fwd_kernel`, grid (B, H)): one program walks its chunks in order (`lax.fori_loop`) with
  S in registers and does both lines above per chunk;
- "parallel": every chunk's own part of S_{c+1} (`_local_kernel`, grid (B, H, chunks)), the chunk scan
  S_{c+1} = exp(A_q) S_c + that part (`_scan_kernel`, grid (B, H): elementwise [P, N] work in registers), then
  every chunk's y from S_c (`_outputs_kernel`, grid (B, H, chunks)). More programs when B x H is small, at the
  cost of the states' round trip through memory.
Either way only the inputs are saved for the backward.

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
The backward's kernels, so that the heavy work is parallel over chunks (the sequential forward's grid (B, H)
leaves most of a GPU idle at batch 1):
1. `_local_kernel` twice, grid (B, H, chunks): each chunk's own part of S_{c+1} and of G_c;
2. `_scan_kernel` twice, grid (B, H): the forward chunk scan recomputes S_c from the saved inputs, the reverse one
   gives G_{c+1} and G_0;
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

from kernels.errors import config_error, shape_error
from kernels.flute.pallas import lower_for_gpu
from kernels.ssd.chunked import chunked_backward

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


def _decay_mask(ac, causal):
    """L[l, s] = exp(A_l - A_s) for s <= l, else 0 (masked before exp: no overflow above the diagonal)."""
    return jnp.exp(jnp.where(causal, ac[:, None] - ac[None, :], -jnp.inf))


def _chunk_outputs(xc, bc, cc, ac, s, causal, prec):
    """y = (C B^T * L) x + exp(A) (C S^T) for one chunk: the intra-chunk part and the incoming state's."""
    y = _dot(_dot(cc, bc, 1, 1, prec) * _decay_mask(ac, causal), xc, 1, 0, prec)
    return y + jnp.exp(ac)[:, None] * _dot(cc, s, 1, 1, prec)


def _chunk_state(v, u, ac, a_last, to_end: bool, prec):
    """(v * w)^T u with w = exp(A_q - A) (to_end: a chunk's own part of the state leaving it, v = x, u = B) or
    w = exp(A) (the chunk's own part of the gradient of the state entering it, v = dy, u = C)."""
    w = jnp.exp(a_last - ac) if to_end else jnp.exp(ac)
    return _dot(v * w[:, None], u, 0, 0, prec)


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
        y_ref[bi, pl.ds(t0, q), hi, :] = _chunk_outputs(xc, bc, cc, ac, s, causal, prec).astype(y_ref.dtype)
        # state update: decay, then add this chunk's contribution
        return jnp.exp(a_last) * s + _chunk_state(xc, bc, ac, a_last, True, prec)

    s = jax.lax.fori_loop(0, nc, body, s0_ref[bi, hi].astype(F32))
    sf_ref[bi, hi] = s.astype(sf_ref.dtype)


def _local_kernel(v_ref, acum_ref, u_ref, out_ref, *, q: int, to_end: bool, prec):
    out_ref[...] = _chunk_state(v_ref[...].astype(F32), u_ref[...].astype(F32), acum_ref[...], acum_ref[q - 1],
                                to_end, prec)


def _scan_kernel(loc_ref, alast_ref, init_ref, out_ref, last_ref, *, nc: int, reverse: bool):
    """carry <- exp(A_q(c)) carry + loc[c] over the chunks (in reverse order when reverse), writing the carry before
    each chunk's update: S_c (forward; last = the final state) or G_{c+1} (reverse; last = G_0)."""
    bi, hi = pl.program_id(0), pl.program_id(1)

    def body(i, carry):
        c = nc - 1 - i if reverse else i
        out_ref[bi, hi, c] = carry
        return jnp.exp(alast_ref[bi, hi, c]) * carry + loc_ref[bi, hi, c]

    last_ref[bi, hi] = jax.lax.fori_loop(0, nc, body, init_ref[bi, hi])


def _outputs_kernel(x_ref, acum_ref, b_ref, c_ref, s_ref, y_ref, *, q: int, prec):
    x, bm, cm = (r[...].astype(F32) for r in (x_ref, b_ref, c_ref))
    y_ref[...] = _chunk_outputs(x, bm, cm, acum_ref[...], s_ref[...], _causal(q)[2], prec)


def _chunk_grad_kernel(x_ref, acum_ref, b_ref, c_ref, dy_ref, s_ref, g_ref, dx_ref, db_ref, dc_ref, da_ref, *,
                       q: int, prec):
    x, bm, cm = (r[...].astype(F32) for r in (x_ref, b_ref, c_ref))  # [Q, P], [Q, N], [Q, N]
    dy, s, g = dy_ref[...], s_ref[...], g_ref[...]  # [Q, P], S_c [P, N], G_{c+1} [P, N]
    ac = acum_ref[...]
    a_last = acum_ref[q - 1]
    row, col, causal = _causal(q)
    lmat = _decay_mask(ac, causal)
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


class _Chunks:
    """Padded operands, cumulative log-decays and the per-chunk BlockSpecs of a grid (B, H, chunks)."""

    def __init__(self, q, x, a, B, C, *extra):
        (self.x, _, self.B, self.C, *self.extra), self.acum = _chunked(q, x, a, B, C, *extra)
        b, tp, h, p = self.x.shape
        g, n = B.shape[2], B.shape[3]
        rep = h // g
        self.q, self.nc, self.grid = q, tp // q, (b, h, tp // q)
        self.a_last = self.acum.reshape(b, h, tp // q, q)[..., -1]  # [B, H, chunks]
        self.x_spec = pl.BlockSpec((None, q, None, p), lambda bi, hi, ci: (bi, ci, hi, 0))
        self.bc_spec = pl.BlockSpec((None, q, None, n), lambda bi, hi, ci: (bi, ci, hi // rep, 0))
        self.head_n = pl.BlockSpec((None, q, None, n), lambda bi, hi, ci: (bi, ci, hi, 0))
        self.a_spec = pl.BlockSpec((None, None, q), lambda bi, hi, ci: (bi, hi, ci))
        self.st_spec = pl.BlockSpec((None, None, None, p, n), lambda bi, hi, ci: (bi, hi, ci, 0, 0))
        self.states = jax.ShapeDtypeStruct((b, h, tp // q, p, n), F32)

    def local(self, v, v_spec, u, to_end, prec, interpret, params):
        """Every chunk's own part of the state leaving it (to_end) or of the state gradient entering it."""
        return pl.pallas_call(
            functools.partial(_local_kernel, q=self.q, to_end=to_end, prec=prec), grid=self.grid,
            in_specs=[v_spec, self.a_spec, self.bc_spec], out_specs=self.st_spec, out_shape=self.states,
            interpret=interpret, name="ssd_local_states", **params,
        )(v, self.acum, u)

    def scan(self, loc, init, reverse, interpret, params):
        """(the carry before each chunk [B, H, chunks, P, N], the last carry [B, H, P, N])."""
        whole = pl.BlockSpec()
        b, h, nc, p, n = self.states.shape
        return pl.pallas_call(
            functools.partial(_scan_kernel, nc=nc, reverse=reverse), grid=(b, h), in_specs=[whole] * 3,
            out_specs=[whole, whole], out_shape=[self.states, jax.ShapeDtypeStruct((b, h, p, n), F32)],
            interpret=interpret, name="ssd_state_scan", **params,
        )(loc, self.a_last, init)


def _forward(x, a, B, C, initial_state, cfg):
    chunk_size, interpret, num_warps, _, mode = cfg[:5]
    _check(x, B, C, chunk_size)
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = min(int(chunk_size), t)
    s0 = jnp.zeros((b, h, p, n), F32) if initial_state is None else initial_state.astype(F32)
    prec, params = _precision(x.dtype), _params(interpret, num_warps)
    ch = _Chunks(q, x, a, B, C)
    tp = ch.x.shape[1]
    y_shape = jax.ShapeDtypeStruct((b, tp, h, p), F32)
    if mode == "parallel":  # chunk-local states, the chunk scan, then every chunk's outputs in parallel
        s_in, final = ch.scan(ch.local(ch.x, ch.x_spec, ch.B, True, prec, interpret, params), s0, False, interpret,
                              params)
        y = pl.pallas_call(
            functools.partial(_outputs_kernel, q=q, prec=prec), grid=ch.grid,
            in_specs=[ch.x_spec, ch.a_spec, ch.bc_spec, ch.bc_spec, ch.st_spec], out_specs=ch.x_spec,
            out_shape=y_shape, interpret=interpret, name="ssd_chunk_outputs", **params,
        )(ch.x, ch.acum, ch.B, ch.C, s_in)
        return y[:, :t], final
    whole = pl.BlockSpec()
    y, final = pl.pallas_call(
        functools.partial(_fwd_kernel, q=q, nc=ch.nc, rep=h // g, prec=prec),
        grid=(b, h), in_specs=[whole] * 5, out_specs=[whole, whole],
        out_shape=[y_shape, jax.ShapeDtypeStruct((b, h, p, n), F32)],
        interpret=interpret, name="ssd_chunked", **params,
    )(ch.x, ch.acum, ch.B, ch.C, s0)
    return y[:, :t], final


def _backward(x, a, B, C, initial_state, dy, dfinal, cfg):
    """The gradients of (x, a, B, C, initial_state) (see the module docstring)."""
    chunk_size, interpret, num_warps, bwd_chunk, _ = cfg[:5]
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = min(int(chunk_size), t, int(bwd_chunk))
    prec, params = _precision(x.dtype), _params(interpret, num_warps)
    grad_params = _params(interpret, max(num_warps, 8) if q * max(p, n) >= 64 * 128 else num_warps)  # 5 [Q, Q] tiles
    s0 = jnp.zeros((b, h, p, n), F32) if initial_state is None else initial_state.astype(F32)
    ch = _Chunks(q, x, a, B, C, dy.astype(F32))
    dyp, = ch.extra
    tp = ch.x.shape[1]
    s_in, _ = ch.scan(ch.local(ch.x, ch.x_spec, ch.B, True, prec, interpret, params), s0, False, interpret, params)
    g_out, g0 = ch.scan(ch.local(dyp, ch.x_spec, ch.C, False, prec, interpret, params), dfinal.astype(F32), True,
                        interpret, params)
    sd = jax.ShapeDtypeStruct
    dx, db, dc, da = pl.pallas_call(
        functools.partial(_chunk_grad_kernel, q=q, prec=prec), grid=ch.grid,
        in_specs=[ch.x_spec, ch.a_spec, ch.bc_spec, ch.bc_spec, ch.x_spec, ch.st_spec, ch.st_spec],
        out_specs=[ch.x_spec, ch.head_n, ch.head_n, ch.a_spec],
        out_shape=[sd((b, tp, h, p), F32), sd((b, tp, h, n), F32), sd((b, tp, h, n), F32), sd((b, h, tp), F32)],
        interpret=interpret, name="ssd_bwd_chunk_grads", **grad_params,
    )(ch.x, ch.acum, ch.B, ch.C, dyp, s_in, g_out)
    per_group = lambda v: v.reshape(b, tp, g, h // g, n).sum(3)[:, :t]  # heads of one group share B/C
    ds0 = None if initial_state is None else g0.astype(initial_state.dtype)
    return (dx[:, :t].astype(x.dtype), jnp.moveaxis(da, 1, 2)[:, :t].astype(a.dtype),
            per_group(db).astype(B.dtype), per_group(dc).astype(C.dtype), ds0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _ssd(x, a, B, C, initial_state, cfg):
    return _forward(x, a, B, C, initial_state, cfg)


def _ssd_fwd(x, a, B, C, initial_state, cfg):
    return _forward(x, a, B, C, initial_state, cfg), (x, a, B, C, initial_state)  # only the inputs are saved


def _ssd_bwd(cfg, res, cts):
    if cfg[5] == "xla":  # XLA's chunked backward, recomputed from the inputs (kernels/ssd/chunked.py)
        return chunked_backward(cfg[0], res, cts)
    return _backward(*res, cts[0], cts[1], cfg)


_ssd.defvjp(_ssd_fwd, _ssd_bwd)
FORWARD_MODES = ("sequential", "parallel")
BACKWARD_MODES = ("pallas", "xla")


def ssd_pallas(x, a, B, C, chunk_size: int = 256, initial_state=None, *, interpret: bool = False,
               num_warps: int = 4, bwd_chunk: int = 64, forward: str = "sequential", bwd: str = "pallas"):
    """The chunked SSD kernels (see the module docstring); differentiable through the backward kernels.
    bwd_chunk: the backward's chunk size (a power of two >= 16; min(chunk_size, T) when smaller). forward:
    "sequential" (one program per sequence and head walks the chunks) or "parallel" (chunk-local states, a chunk
    scan of the states, then the outputs of every chunk in parallel: more programs at small batch x heads). bwd:
    "pallas" (the backward kernels) or "xla" (XLA's chunked backward, `kernels.ssd.chunked.chunked_backward`,
    recomputed from the inputs; what the dispatcher's "auto" uses on GPU until the backward kernels have run there)."""
    _check(x, B, C, chunk_size)
    if not _pow2_ok(int(bwd_chunk)):
        raise shape_error(f"SSD kernel: bwd_chunk={bwd_chunk} needs a power of two >= 16")
    if forward not in FORWARD_MODES:
        raise config_error(f"SSD kernel: forward={forward!r} is not one of {FORWARD_MODES}")
    if bwd not in BACKWARD_MODES:
        raise config_error(f"SSD kernel: bwd={bwd!r} is not one of {BACKWARD_MODES}")
    cfg = (int(chunk_size), bool(interpret), int(num_warps), int(bwd_chunk), forward, bwd)
    return _ssd(x, a, B, C, initial_state, cfg)


def cross_lower(b: int, t: int, h: int, p: int, g: int, n: int, chunk_size: int = 64, dtype=jnp.float32,
                with_state: bool = True, backward: bool = False, forward: str = "sequential"):
    """Lower the forward kernel (backward=True: forward and the three backward kernels, through jax.grad) for an
    H100 on this (CPU) machine (see kernels.flute.pallas.lower_for_gpu)."""
    sd = jax.ShapeDtypeStruct
    args = [sd((b, t, h, p), dtype), sd((b, t, h), jnp.float32), sd((b, t, g, n), dtype), sd((b, t, g, n), dtype)]
    if with_state:
        args.append(sd((b, h, p, n), jnp.float32))
    fn = lambda *v: ssd_pallas(*v[:4], chunk_size, v[4] if with_state else None, forward=forward)
    if backward:
        fwd = fn
        loss = lambda *v: sum(jnp.sum(o) for o in fwd(*v))
        fn = jax.grad(loss, argnums=tuple(range(len(args))))
    return lower_for_gpu(fn, *args)


__all__ = ["ssd_pallas", "cross_lower", "unsupported", "FORWARD_MODES", "BACKWARD_MODES"]
