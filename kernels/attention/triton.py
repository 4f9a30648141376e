"""Flash attention as Pallas GPU kernels (Triton lowering; runs on CPU in interpret mode), forward and backward.

    o, lse = flash_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, causal=, scale=, block_q=, block_k=, interpret=)

Same contract as kernels.attention.chunked.chunked_attention (q [B,T,H,D], k/v [B,S,KV,D], int32 positions and
segment ids; lse [B,H,T], reference.MASKED on rows with nothing to attend).

Design (FlashAttention-2):
- forward: grid (T / block_q, B, H); a program owns block_q query rows of one head and loops over the key blocks
  with an online softmax (running max m, sum l, float32 accumulator). K/V BlockSpecs select KV head h // G, so
  grouped-query attention reads the shared KV head in place (no repeated copy).
- the mask is computed in the kernel from the positions and segment ids of the two blocks; with causal=True a key
  block is skipped (lax.cond) when its first position is after the block's last query position.
- backward: delta = rowsum(o * do) in XLA, then two kernels: dq (grid over query blocks, loop over key blocks) and
  dk/dv (grid (S / block_k, B, KV), loop over the G query heads of the KV head and over the query blocks), so
  dk/dv are summed over the group inside the kernel: no [B, S, H, D] gradient and no atomics.
- T % block_q == 0, S % block_k == 0, D a power of two in [16, 256] (`unsupported` says why a shape is not taken;
  the dispatcher then falls back).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.attention.reference import MASKED


def _dot(a, b, trans_b: bool = False):
    """a [M, K] @ b [K, N] (or b^T for b [N, K]) with float32 accumulation (IEEE precision for float32 inputs)."""
    dims = (((1,), (1,)), ((), ())) if trans_b else (((1,), (0,)), ((), ()))
    prec = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, dims, precision=prec, preferred_element_type=jnp.float32)


def _keep(qp, qs, kp, ks, causal):
    keep = qs[:, None] == ks[None, :]
    if causal:
        keep = keep & (kp[None, :] <= qp[:, None])
    return keep


def _maybe(causal, pred, compute, carry):
    if not causal:
        return compute(carry)
    return jax.lax.cond(pred, compute, lambda c: c, carry)


def _fwd_kernel(q_ref, k_ref, v_ref, qp_ref, kp_ref, qs_ref, ks_ref, o_ref, lse_ref, *, causal, scale, block_k):
    bq, d = q_ref.shape
    n_kb = k_ref.shape[0] // block_k
    q = q_ref[...]
    qp, qs = qp_ref[...], qs_ref[...]
    q_last = jnp.max(qp)

    def body(j, carry):
        ksl = pl.ds(j * block_k, block_k)
        kp = kp_ref[ksl]

        def compute(carry):
            m, l, acc = carry
            keep = _keep(qp, qs, kp, ks_ref[ksl], causal)
            s = jnp.where(keep, _dot(q, k_ref[ksl, :], trans_b=True) * scale, MASKED)
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            p = jnp.where(keep, jnp.exp(s - m_new[:, None]), 0.0)
            alpha = jnp.exp(m - m_new)
            v = v_ref[ksl, :]
            acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
            return m_new, l * alpha + jnp.sum(p, axis=1), acc

        return _maybe(causal, jnp.min(kp) <= q_last, compute, carry)

    init = (jnp.full((bq,), MASKED, jnp.float32), jnp.zeros((bq,), jnp.float32), jnp.zeros((bq, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, n_kb, body, init)
    nonempty = l > 0
    safe_l = jnp.where(nonempty, l, 1.0)
    o_ref[...] = (acc / safe_l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(nonempty, m + jnp.log(safe_l), MASKED)


def _dq_kernel(q_ref, k_ref, v_ref, qp_ref, kp_ref, qs_ref, ks_ref, do_ref, lse_ref, delta_ref, dq_ref, *,
               causal, scale, block_k):
    bq, d = q_ref.shape
    n_kb = k_ref.shape[0] // block_k
    q, do = q_ref[...], do_ref[...]
    qp, qs = qp_ref[...], qs_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_last = jnp.max(qp)

    def body(j, dq):
        ksl = pl.ds(j * block_k, block_k)
        kp = kp_ref[ksl]

        def compute(dq):
            keep = _keep(qp, qs, kp, ks_ref[ksl], causal)
            k = k_ref[ksl, :]
            p = jnp.where(keep, jnp.exp(_dot(q, k, trans_b=True) * scale - lse[:, None]), 0.0)
            dp = _dot(do, v_ref[ksl, :], trans_b=True)
            ds = p * (dp - delta[:, None])
            return dq + _dot(ds.astype(k.dtype), k)

        return _maybe(causal, jnp.min(kp) <= q_last, compute, dq)

    dq = jax.lax.fori_loop(0, n_kb, body, jnp.zeros((bq, d), jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, qp_ref, kp_ref, qs_ref, ks_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                causal, scale, block_q, groups):
    bk, d = k_ref.shape
    n_qb = q_ref.shape[0] // block_q
    h0 = pl.program_id(2) * groups
    k, v = k_ref[...], v_ref[...]
    kp, ks = kp_ref[...], ks_ref[...]
    k_first = jnp.min(kp)

    def head(g, carry):
        h = h0 + g

        def body(i, carry):
            qsl = pl.ds(i * block_q, block_q)
            qp = qp_ref[qsl]

            def compute(carry):
                dk, dv = carry
                q, do = q_ref[qsl, h, :], do_ref[qsl, h, :]
                keep_t = _keep(kp, ks, qp, qs_ref[qsl], False)  # [BK, BQ]: segments
                if causal:
                    keep_t = keep_t & (kp[:, None] <= qp[None, :])
                p_t = jnp.where(keep_t, jnp.exp(_dot(k, q, trans_b=True) * scale - lse_ref[h, qsl][None, :]), 0.0)
                dv = dv + _dot(p_t.astype(do.dtype), do)
                dp_t = _dot(v, do, trans_b=True)
                ds_t = p_t * (dp_t - delta_ref[h, qsl][None, :])
                return dk + _dot(ds_t.astype(q.dtype), q), dv

            return _maybe(causal, jnp.max(qp) >= k_first, compute, carry)

        return jax.lax.fori_loop(0, n_qb, body, carry)

    init = (jnp.zeros((bk, d), jnp.float32), jnp.zeros((bk, d), jnp.float32))
    dk, dv = jax.lax.fori_loop(0, groups, head, init)
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _params(interpret, num_warps, num_stages):
    if interpret:
        return {}
    from jax.experimental.pallas import triton as pltriton

    return {"compiler_params": pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)}


def _fwd_call(q, k, v, q_pos, k_pos, q_seg, k_seg, cfg):
    causal, scale, bq, bk, interpret, nw, ns = cfg
    B, T, H, D = q.shape
    S, KV = k.shape[1], k.shape[2]
    G = H // KV
    kern = functools.partial(_fwd_kernel, causal=causal, scale=scale, block_k=bk)
    q_spec = pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, S, None, D), lambda i, b, h: (b, 0, h // G, 0))
    qrow = pl.BlockSpec((None, bq), lambda i, b, h: (b, i))
    krow = pl.BlockSpec((None, S), lambda i, b, h: (b, 0))
    return pl.pallas_call(
        kern, grid=(T // bq, B, H),
        in_specs=[q_spec, kv_spec, kv_spec, qrow, krow, qrow, krow],
        out_specs=[q_spec, pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, H, T), jnp.float32)],
        interpret=interpret, **_params(interpret, nw, ns),
    )(q, k, v, q_pos, k_pos, q_seg, k_seg)


def _bwd_call(cfg, res, do):
    causal, scale, bq, bk, interpret, nw, ns = cfg
    q, k, v, q_pos, k_pos, q_seg, k_seg, o, lse = res
    B, T, H, D = q.shape
    S, KV = k.shape[1], k.shape[2]
    G = H // KV
    delta = jnp.einsum("bthd,bthd->bht", o.astype(jnp.float32), do.astype(jnp.float32))
    params = _params(interpret, max(nw, 8) if D >= 128 else nw, ns)  # two [block, D] f32 accumulators in dk/dv
    # dq: one program per (query block, batch, head)
    q_spec = pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, S, None, D), lambda i, b, h: (b, 0, h // G, 0))
    qrow = pl.BlockSpec((None, bq), lambda i, b, h: (b, i))
    krow = pl.BlockSpec((None, S), lambda i, b, h: (b, 0))
    stat = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, causal=causal, scale=scale, block_k=bk), grid=(T // bq, B, H),
        in_specs=[q_spec, kv_spec, kv_spec, qrow, krow, qrow, krow, q_spec, stat, stat], out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), interpret=interpret, **params,
    )(q, k, v, q_pos, k_pos, q_seg, k_seg, do, lse, delta)
    # dk, dv: one program per (key block, batch, KV head); loops over the G query heads of that KV head
    qall = pl.BlockSpec((None, T, H, D), lambda j, b, g: (b, 0, 0, 0))
    kblk = pl.BlockSpec((None, bk, None, D), lambda j, b, g: (b, j, g, 0))
    qrow_all = pl.BlockSpec((None, T), lambda j, b, g: (b, 0))
    krow_blk = pl.BlockSpec((None, bk), lambda j, b, g: (b, j))
    stat_all = pl.BlockSpec((None, H, T), lambda j, b, g: (b, 0, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, causal=causal, scale=scale, block_q=bq, groups=G), grid=(S // bk, B, KV),
        in_specs=[qall, kblk, kblk, qrow_all, krow_blk, qrow_all, krow_blk, qall, stat_all, stat_all],
        out_specs=[kblk, kblk],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=interpret, **params,
    )(q, k, v, q_pos, k_pos, q_seg, k_seg, do, lse, delta)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _flash(q, k, v, q_pos, k_pos, q_seg, k_seg, cfg):
    return _fwd_call(q, k, v, q_pos, k_pos, q_seg, k_seg, cfg)


def _flash_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, cfg):
    o, lse = _fwd_call(q, k, v, q_pos, k_pos, q_seg, k_seg, cfg)
    return (o, lse), (q, k, v, q_pos, k_pos, q_seg, k_seg, o, lse)


def _flash_bwd(cfg, res, cts):
    dq, dk, dv = _bwd_call(cfg, res, cts[0])
    return dq, dk, dv, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)

HEAD_DIMS = (16, 32, 64, 128, 256)


def pick_block(n: int, cap: int) -> int:
    """Largest power of two <= cap dividing n (0 when it is below 16: Triton's dot needs >= 16)."""
    b = 1
    while b * 2 <= cap and n % (b * 2) == 0:
        b *= 2
    return b if b >= 16 else 0


def unsupported(q_shape, k_shape, dtype, block_q: int = 64, block_k: int = 64) -> str | None:
    """Why the kernel cannot take these operands (None = it can)."""
    B, T, H, D = q_shape
    S, KV = k_shape[1], k_shape[2]
    if D not in HEAD_DIMS:
        return f"head dim D={D} (q shape {tuple(q_shape)}) is not one of {HEAD_DIMS}"
    if not pick_block(T, block_q):
        return f"query length T={T} (q shape {tuple(q_shape)}) is not a multiple of 16"
    if not pick_block(S, block_k):
        return f"key length S={S} (k shape {tuple(k_shape)}) is not a multiple of 16"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"dtype {jnp.dtype(dtype).name} (q shape {tuple(q_shape)}) is not float32/bfloat16/float16"
    if H % KV:
        return f"H={H} query heads is not a multiple of KV={KV} key/value heads"
    return None


def flash_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, *, causal: bool, scale: float, block_q: int = 64,
                    block_k: int = 64, interpret: bool = False, num_warps: int = 4, num_stages: int = 2):
    """Pallas flash attention; returns (o [B,T,H,D] q.dtype, lse [B,H,T] float32). Differentiable in q, k, v."""
    why = unsupported(q.shape, k.shape, q.dtype, block_q, block_k)
    if why:
        raise ValueError(f"the Pallas flash-attention kernel cannot take this input: {why}")
    if q.shape[-1] > 128:  # keep the [block, D] tiles and float32 accumulators within registers
        block_q, block_k = min(block_q, 32), min(block_k, 32)
    bq, bk = pick_block(q.shape[1], block_q), pick_block(k.shape[1], block_k)
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    ints = [jnp.asarray(a, jnp.int32) for a in (q_pos, k_pos, q_seg, k_seg)]
    cfg = (bool(causal), float(scale), bq, bk, bool(interpret), int(num_warps), int(num_stages))
    return _flash(q, k, v, *ints, cfg)


__all__ = ["flash_attention", "unsupported", "pick_block", "HEAD_DIMS"]
