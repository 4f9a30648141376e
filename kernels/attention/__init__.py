"""Attention kernels and their dispatcher.

`attention(q, k, v, q_pos, k_pos, q_seg, k_seg, causal=, scale=, impl=None)` -> o [B, T, H, D]; paths:
- "reference": pure JAX, materialises the [T, S] scores (kernels/attention/reference.py);
- "chunked": blockwise XLA with an online softmax and a recomputing backward, memory linear in T (chunked.py);
- "pallas": the Pallas GPU (Triton) flash-attention kernel, forward and backward (triton.py);
- "interpret": the same kernel in Pallas interpret mode (CPU testing; slow);
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (GPU; index-causal, no segments/padding);
- "tpu": jax.experimental.pallas.ops.tpu flash attention (tpu.py; index-causal, GQA heads repeated).
"auto" picks by backend and shape: GPU -> pallas when it can take the shape; TPU -> tpu when it can; otherwise
chunked once S >= CHUNKED_MIN_KEYS keys (and T >= 2 queries), else reference. Override per call (`impl=`),
process-wide (`set_impl` / `use_impl`) or with JAXLM_ATTENTION_IMPL. A forced path that cannot take the input
raises `Unsupported` (a ValueError) naming the shape; "auto" falls back instead.

Masking contract (reference.py): keys with k_pos > q_pos are dropped when causal; keys whose segment differs from
the query's are dropped (packed documents; key padding = key segment -1); a row with nothing to attend gets the mean
of the values. `same_positions=True` says q_pos and k_pos are the same increasing positions (self-attention over
one sequence), which the index-causal paths (cudnn, tpu) need.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from kernels.attention import chunked, reference, tpu, triton
from kernels.attention.reference import fill_empty_rows
from kernels.impl import ImplChoice

IMPLS = ("auto", "reference", "chunked", "pallas", "interpret", "cudnn", "tpu")
CHUNKED_MIN_KEYS = 2048
CHOICE = ImplChoice("attention", IMPLS, "JAXLM_ATTENTION_IMPL")


class Unsupported(ValueError):
    """A forced attention path cannot take the input (the message names the shape)."""


set_impl, use_impl = CHOICE.set, CHOICE.use


def _cudnn_unsupported(q_shape, k_shape, dtype, causal, masked, same_positions):
    D = q_shape[3]
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cuDNN attention needs bfloat16/float16, got {jnp.dtype(dtype).name} (q shape {tuple(q_shape)})"
    if D % 8 or D > 128:
        return f"cuDNN attention needs head dim D % 8 == 0 and D <= 128, got D={D} (q shape {tuple(q_shape)})"
    if masked:
        return "cuDNN attention here takes no segment ids or key padding mask"
    if causal and not (same_positions and q_shape[1] == k_shape[1]):
        return (f"cuDNN attention is index-causal: it needs self-attention over one sequence (q_pos is k_pos), "
                f"got q shape {tuple(q_shape)}, k shape {tuple(k_shape)}")
    return None


def why_not(impl: str, q_shape, k_shape, dtype, *, causal: bool, masked: bool = False,
            key_padding: bool = False, same_positions: bool = False) -> str | None:
    """Why path `impl` cannot take this input (None = it can). masked: segment ids or a key padding mask given."""
    if impl in ("reference", "chunked"):
        return None
    if impl in ("pallas", "interpret"):
        return triton.unsupported(q_shape, k_shape, dtype)
    if impl == "cudnn":
        return _cudnn_unsupported(q_shape, k_shape, dtype, causal, masked, same_positions)
    if impl == "tpu":
        if key_padding:
            return "the TPU kernel path takes no key padding mask (it would not detect fully masked rows)"
        if causal and not (same_positions and q_shape[1] == k_shape[1]):
            return (f"the TPU kernel is index-causal: it needs self-attention over one sequence (q_pos is k_pos), "
                    f"got q shape {tuple(q_shape)}, k shape {tuple(k_shape)}")
        return tpu.unsupported(q_shape, k_shape, dtype)
    raise ValueError(f"attention impl={impl!r}: expected one of {IMPLS}")


def resolve_impl(impl: str | None, q_shape, k_shape, dtype, *, causal: bool, masked: bool = False,
                 key_padding: bool = False, same_positions: bool = False, backend: str | None = None) -> str:
    impl = CHOICE.get(impl)
    kw = dict(causal=causal, masked=masked, key_padding=key_padding, same_positions=same_positions)
    if impl != "auto":
        why = why_not(impl, q_shape, k_shape, dtype, **kw)
        if why:
            raise Unsupported(f"attention impl={impl!r} cannot take this input: {why}")
        return impl
    backend = backend or jax.default_backend()
    if backend == "gpu" and why_not("pallas", q_shape, k_shape, dtype, **kw) is None:
        return "pallas"
    if backend == "tpu" and why_not("tpu", q_shape, k_shape, dtype, **kw) is None:
        return "tpu"
    return "chunked" if k_shape[1] >= CHUNKED_MIN_KEYS and q_shape[1] >= 2 else "reference"


def _bf16(x):
    return x.astype(jnp.bfloat16).astype(jnp.float32)


def attention(q, k, v, q_pos=None, k_pos=None, q_seg=None, k_seg=None, *, causal: bool = True,
              scale: float | None = None, kv_mask=None, impl: str | None = None, same_positions: bool = False,
              bf16_round: bool = False, block_q: int = 64, block_k: int = 64, chunk: int = 512):
    """q [B,T,H,D], k/v [B,S,KV,D]; positions/segments [B,T] / [B,S] int (None: index positions / one segment;
    segment ids >= 0); kv_mask [B,S] bool (True = attend). Returns o [B,T,H,D] in q.dtype.
    bf16_round: round q, k, v and the output to bfloat16 (MobiLlama's flash-attn reference)."""
    B, T, H, D = q.shape
    S = k.shape[1]
    scale = D ** -0.5 if scale is None else float(scale)
    masked = q_seg is not None or k_seg is not None or kv_mask is not None
    which = resolve_impl(impl, q.shape, k.shape, q.dtype, causal=causal, masked=masked,
                         key_padding=kv_mask is not None, same_positions=same_positions)
    if kv_mask is not None:  # a padded key joins segment -1, which no query is in
        base = jnp.zeros((B, S), jnp.int32) if k_seg is None else jnp.asarray(k_seg, jnp.int32)
        k_seg = jnp.where(jnp.asarray(kv_mask, bool), base, -1)
        q_seg = jnp.zeros((B, T), jnp.int32) if q_seg is None else q_seg
    dtype = q.dtype
    if bf16_round:
        q, k, v = _bf16(q), _bf16(k), _bf16(v)
    if q_pos is None:
        q_pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    if k_pos is None:
        k_pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
    if which == "reference":
        o = reference.attention(q, k, v, q_pos, k_pos, q_seg, k_seg, causal=causal, scale=scale)
    elif which == "cudnn":
        o = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, implementation="cudnn")
    else:
        qs = jnp.zeros((B, T), jnp.int32) if q_seg is None else jnp.asarray(q_seg, jnp.int32)
        ks = jnp.zeros((B, S), jnp.int32) if k_seg is None else jnp.asarray(k_seg, jnp.int32)
        if which == "tpu":
            o = tpu.flash_attention(q, k, v, qs, ks, causal=causal, scale=scale)
        else:
            q_pos, k_pos = jnp.asarray(q_pos, jnp.int32), jnp.asarray(k_pos, jnp.int32)
            if which == "chunked":
                o, lse = chunked.chunked_attention(q, k, v, q_pos, k_pos, qs, ks, causal=causal, scale=scale,
                                                   block_k=chunk)
            else:
                o, lse = triton.flash_attention(q, k, v, q_pos, k_pos, qs, ks, causal=causal, scale=scale,
                                                block_q=block_q, block_k=block_k, interpret=(which == "interpret"))
            o = fill_empty_rows(o, lse, v)
    if bf16_round:
        o = o.astype(jnp.bfloat16)
    return o.astype(dtype)


__all__ = ["attention", "resolve_impl", "why_not", "set_impl", "use_impl", "Unsupported", "IMPLS",
           "CHUNKED_MIN_KEYS", "fill_empty_rows"]
