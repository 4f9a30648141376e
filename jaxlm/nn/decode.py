"""Decode that touches each byte once: the stacked KV cache updated in place, and decode attention over the filled
slots of each row.

`LayerCache` is what the decoder's layer scan carries instead of slicing the cache in and stacking it back out:
the whole stacked keys/values [L, B, S, KV, D] plus the index of the layer being run. A layer scatters its new
keys/values into slots lengths[b] .. lengths[b] + T - 1 of its own layer (`write`); in a while loop over a carried,
donated buffer XLA does that scatter in place, so one decode step writes only the new slot of every layer (the old
path copied each layer's cache out of the stack, updated the copy and copied it back: three passes over the cache).

`decode_attend` is attention for one new token per row (T = 1) reading keys/values straight out of the stacked
cache; slots >= lengths[b] are masked. It dispatches to
- "xla": a broadcast-multiply-reduce that XLA fuses with the layer's dynamic slice (the cache is read once, no
  per-layer copy; the default off GPU);
- "pallas": the Pallas GPU kernel (kernels/decode/pallas.py), which loops only over the filled blocks of each row
  (ragged lengths: a row with 10 tokens in a 4096-slot cache reads one block); the default on GPU;
- "interpret": that kernel in interpret mode (CPU testing; slow).
Override with `impl=`, `use_impl(...)` or the environment variable JAXLM_DECODE_IMPL. Shapes the kernel cannot take
(see `kernels.decode.pallas.unsupported`) fall back to "xla" under "auto" and raise `ShapeError` naming the shape
when "pallas" was asked for; so does a multi-device mesh (`jaxlm.sharding.use_mesh`) under "auto", since the
kernel is not partitioned.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp

from jaxlm.errors import ShapeError
from kernels.impl import ImplChoice

NEG = jnp.finfo(jnp.float32).min
IMPLS = ("auto", "xla", "pallas", "interpret")


@jax.tree_util.register_dataclass
@dataclass
class LayerCache:
    """Keys/values of a layer stack and the layer being run: either the stacked k/v [L, B, S, KV, D] with `layer`
    the int32 index of the layer (the layer scan's carry), or one layer's own k/v [B, S, KV, D] with layer=None
    (separate per-layer buffers, as the unrolled decode step of jaxlm/infer/layers.py passes them)."""

    k: jax.Array
    v: jax.Array
    layer: jax.Array | None = None

    @property
    def stacked(self) -> bool:
        return self.layer is not None

    def at_layer(self, layer) -> "LayerCache":
        return replace(self, layer=jnp.asarray(layer, jnp.int32))

    def write(self, k_new, v_new, lengths) -> "LayerCache":
        """k_new/v_new [B, T, KV, D] go to slots lengths[b] + t of this layer (a scatter; in place under a scan or on
        a donated per-layer buffer)."""
        B, T = k_new.shape[:2]
        rows = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None], (B, T))
        slots = jnp.asarray(lengths, jnp.int32)[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
        if not self.stacked:  # a buffer of its own: a one-slot write is a dynamic-update-slice, in place
            put = lambda c, n: c.at[rows, slots].set(n.astype(c.dtype), unique_indices=True, mode="drop")
            return replace(self, k=put(self.k, k_new), v=put(self.v, v_new))
        unique = True
        if B * T == 1:  # one index: XLA would rewrite the scatter as a dynamic-update-slice, which its CPU backend
            # then copies the whole cache around inside the scan; the same slot written twice stays a scatter
            rows, slots, unique = jnp.concatenate([rows, rows], 1), jnp.concatenate([slots, slots], 1), False
            k_new, v_new = jnp.concatenate([k_new, k_new], 1), jnp.concatenate([v_new, v_new], 1)
        put = lambda c, n: c.at[self.layer, rows, slots].set(n.astype(c.dtype), unique_indices=unique, mode="drop")
        return replace(self, k=put(self.k, k_new), v=put(self.v, v_new))

    def layer_kv(self):
        """This layer's keys and values [B, S, KV, D]."""
        if not self.stacked:
            return self.k, self.v
        take = lambda c: jax.lax.dynamic_index_in_dim(c, self.layer, 0, keepdims=False)
        return take(self.k), take(self.v)

    def as_stacked(self) -> "LayerCache":
        """The stacked form (a per-layer buffer gets a leading axis of 1, a free reshape; layer 0)."""
        return self if self.stacked else LayerCache(self.k[None], self.v[None], jnp.zeros((), jnp.int32))


CHOICE = ImplChoice("decode attention", IMPLS, "JAXLM_DECODE_IMPL")
set_impl, use_impl = CHOICE.set, CHOICE.use


def _multi_device_mesh() -> bool:
    from jaxlm.sharding import multi_device_mesh

    return multi_device_mesh()


def resolve_impl(impl: str | None, q_shape, cache_shape, dtype) -> str:
    from kernels.decode.pallas import unsupported

    impl = CHOICE.get(impl)
    why = unsupported(q_shape, cache_shape, dtype)
    if impl == "auto":  # the kernel is a single-device custom call: under a multi-device mesh XLA's path shards
        return "pallas" if jax.default_backend() == "gpu" and why is None and not _multi_device_mesh() else "xla"
    if impl in ("pallas", "interpret") and why is not None:
        raise ShapeError(f"decode attention kernel: {why}")
    return impl


def decode_attend_xla(q, k, v, layer, lengths, scale: float, bf16_round: bool = False, k_new=None, v_new=None):
    """q [B, 1, H, D]; k/v [L, B, S, KV, D]; layer int; lengths [B] filled slots per row; k_new/v_new [B, 1, KV, D]
    (the new token's key/value, not yet in the cache) or None. Same math as `jaxlm.nn.attention.attend` over the
    slots < lengths[b] followed by the new token."""
    B, _, H, D = q.shape
    S, KV = k.shape[2], k.shape[3]
    G = H // KV
    kl = jax.lax.dynamic_index_in_dim(k, layer, 0, keepdims=False)
    vl = jax.lax.dynamic_index_in_dim(v, layer, 0, keepdims=False)
    cdt = q.dtype  # attend() casts the cache to q's dtype and accumulates in float32
    f32 = jnp.float32
    up = lambda t: t.astype(cdt).astype(f32)
    if bf16_round:  # MobiLlama: inputs rounded to bfloat16, computed in float32. reduce_precision, not a convert
        # pair: XLA may drop f32 -> bf16 -> f32 round trips (excess precision), depending on how the step fuses
        up = lambda t: jax.lax.reduce_precision(t.astype(f32), exponent_bits=8, mantissa_bits=7)
    qg = up(q[:, 0].reshape(B, 1, KV, G, D))
    s = jnp.sum(qg * up(kl)[:, :, :, None, :], axis=-1) * scale  # [B, S, KV, G]
    valid = jnp.arange(S, dtype=jnp.int32)[None, :] < jnp.asarray(lengths, jnp.int32)[:, None]
    s = jnp.where(valid[:, :, None, None], s, NEG)
    vals = up(vl)[:, :, :, None, :]
    if k_new is not None:
        s = jnp.concatenate([s, jnp.sum(qg * up(k_new)[:, :, :, None, :], axis=-1) * scale], axis=1)
    p = jax.nn.softmax(s, axis=1)
    p = p if bf16_round else up(p)
    o = jnp.sum(p[:, :S, ..., None] * vals, axis=1)  # [B, KV, G, D]
    if v_new is not None:
        o = o + p[:, S, ..., None] * up(v_new)[:, 0, :, None, :]
    o = o.reshape(B, 1, H, D)
    return up(o) if bf16_round else o  # bf16-rounded values in float32


def decode_attend(q, cache: LayerCache, lengths, scale: float | None = None, bf16_round: bool = False, *,
                  k_new=None, v_new=None, impl: str | None = None):
    """Attention of one new query per row q [B, 1, H, D] over the filled slots (< lengths[b]) of the current layer
    of `cache` (stacked, or one layer's own buffers), then the new token's own key/value k_new/v_new [B, 1, KV, D] when given (so the cache can be read
    before the new slot is written: the write then only goes to the carried buffer). Returns [B, 1, H, D] in q's
    dtype."""
    B, T, H, D = q.shape
    if T != 1:
        raise ShapeError(f"decode_attend takes one query per row; q has shape {tuple(q.shape)}")
    if cache.k.ndim == 4 and not cache.stacked:
        cache = cache.as_stacked()
    if cache.k.ndim != 5 or cache.k.shape[1] != B or cache.k.shape[4] != D or H % cache.k.shape[3]:
        raise ShapeError(f"decode_attend: cache k has shape {tuple(cache.k.shape)}; expected [L, {B}, S, KV, {D}] "
                         f"with KV dividing {H} query heads (q {tuple(q.shape)})")
    scale = D ** -0.5 if scale is None else float(scale)
    which = resolve_impl(impl, q.shape, cache.k.shape, cache.k.dtype)
    if which == "xla":
        o = decode_attend_xla(q, cache.k, cache.v, cache.layer, lengths, scale, bf16_round, k_new, v_new)
    else:
        from kernels.decode.pallas import decode_attention

        new = None if k_new is None else (k_new[:, 0], v_new[:, 0])
        o = decode_attention(q[:, 0], cache.k, cache.v, cache.layer, lengths, scale=scale, bf16_round=bf16_round,
                             new=new, interpret=(which == "interpret"))[:, None]
    return o.astype(q.dtype)


__all__ = ["LayerCache", "decode_attend", "decode_attend_xla", "set_impl", "use_impl", "resolve_impl", "IMPLS"]
