"""TPU path: the Pallas TPU (Mosaic) flash attention shipped in jax.experimental.pallas.ops.tpu, forward and
backward, behind this repo's layout and mask contract.

Differences from the GPU kernel, handled here or by the dispatcher (kernels/attention/__init__.py):
- that kernel's causal mask is by index (key index <= query index), so the dispatcher only sends it causal
  self-attention whose query and key positions are the same array (positions increasing along the sequence);
- it needs as many KV heads as query heads, so grouped-query KV heads are repeated here (jnp.repeat; on TPU the
  repeat is one extra K/V copy, O(S) not O(S^2));
- key padding is passed as segment ids (a padded key gets segment -1); a query row with nothing to attend is not
  detected, so the dispatcher does not route key-padding masks here.
"""

from __future__ import annotations

import jax.numpy as jnp

BLOCK = 128  # the TPU kernel's default block sizes; T and S must be multiples


def unsupported(q_shape, k_shape, dtype) -> str | None:
    B, T, H, D = q_shape
    S = k_shape[1]
    if T % BLOCK or S % BLOCK:
        return f"T={T}, S={S} (q shape {tuple(q_shape)}, k shape {tuple(k_shape)}) are not multiples of {BLOCK}"
    if D % 128 and D not in (64,):
        return f"head dim D={D} (q shape {tuple(q_shape)}) is not 64 or a multiple of 128"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        return f"dtype {jnp.dtype(dtype).name} is not float32/bfloat16"
    return None


def flash_attention(q, k, v, q_seg, k_seg, *, causal: bool, scale: float):
    """q [B,T,H,D], k/v [B,S,KV,D], q_seg [B,T], k_seg [B,S] int32 -> o [B,T,H,D] (q.dtype)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tfa

    why = unsupported(q.shape, k.shape, q.dtype)
    if why:
        raise ValueError(f"the Pallas TPU flash-attention kernel cannot take this input: {why}")
    G = q.shape[2] // k.shape[2]
    t = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, H, D] <-> [B, H, T, D]
    kh, vh = t(k.astype(q.dtype)), t(v.astype(q.dtype))
    if G > 1:
        kh, vh = jnp.repeat(kh, G, axis=1), jnp.repeat(vh, G, axis=1)
    seg = tfa.SegmentIds(q=jnp.asarray(q_seg, jnp.int32), kv=jnp.asarray(k_seg, jnp.int32))
    o = tfa.flash_attention(t(q), kh, vh, segment_ids=seg, causal=bool(causal), sm_scale=float(scale))
    return t(o).astype(q.dtype)


def lower_for_tpu(fn, *args):
    """Lower `jax.jit(fn)` for TPU on this machine (runs the real Pallas -> Mosaic lowering)."""
    import jax

    return jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",))


__all__ = ["flash_attention", "unsupported", "lower_for_tpu", "BLOCK"]
