"""Chunked SSD (the state-space dual form of Mamba-2), pure JAX.

Same contract as `kernels.ssd.reference.ssd_scan`, computed in chunks of Q tokens (ssd_minimal's four steps):
  1. intra-chunk: Y_diag[l] = sum_{s<=l} (C_l . B_s) exp(A_l - A_s) x_s        (A = within-chunk cumsum of a)
  2. chunk states: S_c = sum_s exp(A_last - A_s) x_s B_s^T
  3. inter-chunk recurrence over chunks (lax.scan, linear in the number of chunks), starting from the initial state:
     S_in(c+1) = exp(A_last(c)) S_in(c) + S_c ; the state after the last chunk is the final state
  4. state -> output: Y_off[l] = exp(A_l) C_l S_in(c)
T need not be a multiple of Q: the tail is padded with x = 0, a = 0, B = C = 0, which leaves every real output and
the final state unchanged. Work is O(T Q) and memory O(T Q + T/Q * P N) per head instead of O(T^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.ssd.reference import expand_groups


def segsum(a):
    """a [..., Q] -> [..., Q, Q] with out[i, j] = sum_{k=j+1..i} a_k for i >= j, -inf above the diagonal.

    Built from a masked cumulative sum (not a difference of cumsums) so large |a| does not cancel catastrophically.
    """
    q = a.shape[-1]
    rep = jnp.broadcast_to(a[..., :, None], a.shape + (q,))  # rep[..., k, j] = a_k
    strict = jnp.tril(jnp.ones((q, q), bool), -1)  # k > j
    out = jnp.cumsum(jnp.where(strict, rep, 0.0), axis=-2)  # out[i, j] = sum_{j<k<=i} a_k
    return jnp.where(jnp.tril(jnp.ones((q, q), bool)), out, -jnp.inf)


def ssd_chunked(x, a, B, C, chunk_size: int = 256, initial_state=None):
    b, t, h, p = x.shape
    f32 = jnp.float32
    x, a = x.astype(f32), a.astype(f32)
    B, C = expand_groups(B, h).astype(f32), expand_groups(C, h).astype(f32)
    n = B.shape[-1]
    q = int(chunk_size)
    if q <= 0:
        raise ValueError(f"chunk_size={chunk_size} must be positive")
    q = min(q, t)  # a sequence shorter than one chunk is one (unpadded) chunk
    pad = (-t) % q
    if pad:
        padt = lambda v: jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        x, a, B, C = padt(x), padt(a), padt(B), padt(C)
    nc = (t + pad) // q
    # [b, c, l, h, ...]
    x = x.reshape(b, nc, q, h, p)
    B = B.reshape(b, nc, q, h, n)
    C = C.reshape(b, nc, q, h, n)
    a = a.reshape(b, nc, q, h).transpose(0, 3, 1, 2)  # [b, h, c, l]
    a_cum = jnp.cumsum(a, axis=-1)

    # 1. intra-chunk (diagonal blocks)
    L = jnp.exp(segsum(a))  # [b, h, c, l, s]
    G = jnp.einsum("bclhn,bcshn->bhcls", C, B)
    y_diag = jnp.einsum("bhcls,bcshp->bclhp", G * L, x)

    # 2. per-chunk states (decayed to the chunk end)
    decay_states = jnp.exp(a_cum[..., -1:] - a_cum)  # [b, h, c, l]
    states = jnp.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, x)

    # 3. inter-chunk recurrence
    s0 = jnp.zeros((b, h, p, n), f32) if initial_state is None else initial_state.astype(f32)
    chunk_decay = jnp.exp(a_cum[..., -1])  # [b, h, c]

    def body(s, inp):
        st, dec = inp
        return dec[..., None, None] * s + st, s  # emit the state entering this chunk

    final, s_in = jax.lax.scan(body, s0, (jnp.moveaxis(states, 1, 0), jnp.moveaxis(chunk_decay, 2, 0)))
    s_in = jnp.moveaxis(s_in, 0, 1)  # [b, c, h, p, n]

    # 4. state -> output
    y_off = jnp.einsum("bclhn,bchpn,bhcl->bclhp", C, s_in, jnp.exp(a_cum))
    y = (y_diag + y_off).reshape(b, nc * q, h, p)[:, :t]
    return y, final


def chunked_backward(chunk_size: int, res, cts):
    """The backward pass of an SSD custom_vjp with residuals (x, a, B, C, initial_state or None): the VJP of
    `ssd_chunked`, recomputed from the inputs (no [T, T] matrix is stored). Used by the CPU default (the
    sequential scan forward, whose own backward is 8-15x slower; BENCHMARKS.md)."""
    x, a, B, C, s0 = res
    if s0 is None:
        _, vjp = jax.vjp(lambda *v: ssd_chunked(*v, chunk_size, None), x, a, B, C)
        return (*vjp(cts), None)
    _, vjp = jax.vjp(lambda *v: ssd_chunked(*v[:4], chunk_size, v[4]), x, a, B, C, s0)
    return vjp(cts)
