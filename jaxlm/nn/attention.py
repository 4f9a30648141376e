"""Multi-head / grouped-query attention: causal or bidirectional self-attention with rotary embeddings and an optional
KV cache (`Attention`), and cross-attention to a memory (`CrossAttention`).

A cache for one layer is a pair (k, v), each [B, S, KV, D], plus `lengths` [B]: the number of slots already
written per row. New keys/values are written at slots lengths[b] .. lengths[b]+T-1 and every query at slot
p attends to the slots <= p. Rows of a batch may therefore hold prompts of different lengths (right-padded).

Masks: `causal` keeps key positions <= the query position; a key mask [B, S] (True = attend) drops padded keys
(bidirectional encoders, memories of different lengths). A query row whose keys are all masked gets the mean of the
values (a uniform softmax), never NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ConfigError, ShapeError
from jaxlm.nn.decode import LayerCache, decode_attend
from jaxlm.nn.linear import Linear
from jaxlm.nn.rope import apply_rope, rope_angles
from jaxlm.sharding import shard
import kernels.attention as kattn

NEG = jnp.finfo(jnp.float32).min


def write_cache(cache, new, lengths):
    """cache [B, S, KV, D], new [B, T, KV, D]: write new at slot lengths[b] of each row."""
    upd = lambda c, n, i: jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (i, 0, 0))
    return jax.vmap(upd)(cache, new, lengths)


def score_mask(q_pos=None, k_pos=None, causal: bool = True, kv_mask=None, segment_ids=None):
    """[B, T, S] bool (True = attend), or None when nothing is masked. segment_ids = (q_seg [B,T], kv_seg [B,S]):
    a query attends only the keys of its own segment (packed documents)."""
    mask = None
    if causal:
        mask = k_pos[:, None, :] <= q_pos[:, :, None]
    if kv_mask is not None:
        km = jnp.asarray(kv_mask, bool)[:, None, :]
        mask = km if mask is None else mask & km
    if segment_ids is not None:
        sm = segment_ids[0][:, :, None] == segment_ids[1][:, None, :]
        mask = sm if mask is None else mask & sm
    return mask


def _segment_pair(segment_ids, B: int, T: int, S: int):
    """segment_ids [B,T] (self-attention, T == S) or (q_seg [B,T], kv_seg [B,S]) -> the pair, checked."""
    if segment_ids is None:
        return None
    pair = (segment_ids, segment_ids) if not isinstance(segment_ids, (tuple, list)) else tuple(segment_ids)
    shapes = tuple(tuple(jnp.shape(s)) for s in pair)
    if len(pair) != 2 or shapes != ((B, T), (B, S)):
        raise ShapeError(f"segment_ids have shapes {shapes}; expected [B, T] = {(B, T)} and [B, S] = {(B, S)} "
                         "(one [B, T] array for self-attention, or a (query, key) pair)")
    return tuple(jnp.asarray(s, jnp.int32) for s in pair)


def _per_shard(q, k, v, q_pos, k_pos, segs, kv_mask, kw):
    """A kernel path under the active mesh: run it per shard (shard_map; batch over data/fsdp, heads over tensor),
    since the SPMD partitioner cannot split a Pallas/cuDNN custom call (it would gather the whole batch)."""
    from jaxlm.sharding import _current_mesh, logical_to_spec

    names = ("q_pos", "k_pos", "q_seg", "k_seg", "kv_mask")
    vals = (q_pos, k_pos) + (segs or (None, None)) + (kv_mask,)
    present = [(n, x) for n, x in zip(names, vals) if x is not None]
    if kw["same_positions"] and q_pos is not None:
        present = [(n, x) for n, x in present if n != "k_pos"]

    def run(q, k, v, *xs):
        got = dict(zip([n for n, _ in present], xs))
        if kw["same_positions"] and "q_pos" in got:
            got["k_pos"] = got["q_pos"]
        return kattn.attention(q, k, v, got.get("q_pos"), got.get("k_pos"), got.get("q_seg"), got.get("k_seg"),
                               kv_mask=got.get("kv_mask"), **kw)

    mesh = _current_mesh()
    if mesh is None or mesh.size == 1:
        return run(q, k, v, *[x for _, x in present])
    from jax.sharding import PartitionSpec as P

    qs = logical_to_spec(("batch", None, "heads", None), q.shape, mesh)
    ks = logical_to_spec(("batch", None, "kv", None), k.shape, mesh)
    if qs[2] != ks[2]:  # a grouped-query group must stay whole on each shard
        qs, ks = P(qs[0], None, None, None), P(ks[0], None, None, None)
    rows = P(qs[0], None)
    return jax.shard_map(run, mesh=mesh, in_specs=(qs, ks, ks) + (rows,) * len(present), out_specs=qs,
                         check_vma=False)(q, k, v, *[x for _, x in present])


def resolve_attention_impl(impl, q, k, q_pos=None, k_pos=None, *, causal: bool = True, kv_mask=None,
                           segment_ids=None) -> str:
    """The path `attend` takes for these operands (kernels/attention: "reference", "chunked", "pallas",
    "interpret", "cudnn", "tpu"). A forced kernel that cannot take them raises ShapeError naming the shape."""
    try:
        return kattn.resolve_impl(impl, q.shape, k.shape, q.dtype, causal=causal,
                                  masked=segment_ids is not None or kv_mask is not None,
                                  key_padding=kv_mask is not None, same_positions=q_pos is k_pos)
    except kattn.Unsupported as e:
        raise ShapeError(str(e)) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None


def attend(q, k, v, q_pos=None, k_pos=None, scale: float | None = None, bf16_round: bool = False, *,
           causal: bool = True, kv_mask=None, segment_ids=None, impl: str | None = None):
    """q [B,T,H,D], k/v [B,S,KV,D] (H a multiple of KV: grouped-query); q_pos [B,T], k_pos [B,S] slot positions
    (needed when causal: mask k_pos <= q_pos); kv_mask [B,S] True = attend; segment_ids [B,T] (self-attention) or
    (q_seg [B,T], kv_seg [B,S]) ints >= 0: attend within a segment only. scale defaults to D ** -0.5.

    impl picks the path (kernels/attention; None = JAXLM_ATTENTION_IMPL or "auto": by backend and shape, the
    flash kernel on GPU/TPU, the chunked XLA path for long keys on CPU, else the reference below, which every
    path matches). "auto" falls back when a kernel cannot take the shape; a forced one raises ShapeError."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    segs = _segment_pair(segment_ids, B, T, k.shape[1])
    which = resolve_attention_impl(impl, q, k, q_pos, k_pos, causal=causal, kv_mask=kv_mask, segment_ids=segs)
    if which != "reference":
        kw = dict(causal=causal, scale=scale, impl=which, same_positions=q_pos is k_pos, bf16_round=bf16_round)
        if which == "chunked":  # plain XLA: the partitioner shards it like the reference
            return kattn.attention(q, k, v, q_pos, k_pos, *(segs or (None, None)), kv_mask=kv_mask, **kw)
        return _per_shard(q, k, v, q_pos, k_pos, segs, kv_mask, kw)
    # MobiLlama reference: flash-attn on bfloat16 inputs. reduce_precision, not an f32 -> bf16 -> f32 convert pair
    # (which XLA may drop as a no-op round trip)
    to_bf16 = lambda t: jax.lax.reduce_precision(t.astype(jnp.float32), exponent_bits=8, mantissa_bits=7)
    if bf16_round:
        q, k, v = (to_bf16(t) for t in (q, k, v))
    g = "g" if H > KV else ""  # no size-1 group axis: on XLA CPU it costs layout copies (~10% of a train step)
    qg = q.reshape(B, T, KV, H // KV, D) if g else q
    s = jnp.einsum(f"btk{g}d,bskd->bk{g}ts", qg, k, preferred_element_type=jnp.float32) * scale
    mask = score_mask(q_pos, k_pos, causal, kv_mask, segs)
    if mask is not None:
        s = jnp.where(mask[:, None, None] if g else mask[:, None], s, NEG)  # [B,1,(1,)T,S]
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum(f"bk{g}ts,bskd->btk{g}d", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    o = o.reshape(B, T, H, D)
    if bf16_round:
        o = to_bf16(o)
    return o.astype(q.dtype)


class _Heads(nnx.Module):
    """q/k/v/o projections with logical axis names; keys/values read a `kv_dim`-wide input (the memory for
    cross-attention)."""

    def _build(self, d: int, kv_dim: int, num_heads: int, num_kv_heads: int, head_dim: int, *, qkv_bias: bool,
               out_bias: bool, scale_power: float, init_std: float, dtype, param_dtype, rngs: nnx.Rngs):
        if num_heads % num_kv_heads:
            raise ConfigError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        kw = dict(std=init_std, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype), rngs=rngs)
        self.q = Linear(d, num_heads * head_dim, ("embed", "heads"), bias=qkv_bias, **kw)
        self.k = Linear(kv_dim, num_kv_heads * head_dim, ("embed", "kv"), bias=qkv_bias, **kw)
        self.v = Linear(kv_dim, num_kv_heads * head_dim, ("embed", "kv"), bias=qkv_bias, **kw)
        self.o = Linear(num_heads * head_dim, d, ("heads", "embed"), bias=out_bias, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = float(head_dim) ** (-scale_power)

    def _split(self, x, proj, heads: int):
        B, T, _ = x.shape
        return proj(x).reshape(B, T, heads, self.head_dim)

    def _out(self, o):
        B, T = o.shape[:2]
        return self.o(o.reshape(B, T, self.num_heads * self.head_dim))


def _check_mask(mask, B: int, S: int, name: str):
    if mask is not None and tuple(mask.shape) != (B, S):
        raise ShapeError(f"{name} has shape {tuple(mask.shape)}; expected [B, S] = {(B, S)} (True = attend)")


class Attention(_Heads):
    """Self-attention from a decoder config (hidden_size, num_heads, num_kv_heads, head_dim, biases, rotary
    settings, attn_scale_power, attn_bf16_round, causal). `causal=` overrides cfg.causal."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, causal: bool | None = None):
        self._build(cfg.hidden_size, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                    qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, scale_power=cfg.attn_scale_power,
                    init_std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.rotary_dim, self.rope_style, self.theta = cfg.rot_dim, cfg.rope_style, cfg.rope_theta
        self.bf16_round = cfg.attn_bf16_round
        self.attention_impl = getattr(cfg, "attention_impl", None)  # kernels/attention path; None = auto
        self.causal = bool(getattr(cfg, "causal", True) if causal is None else causal)

    def qkv(self, x, positions):
        q = self._split(x, self.q, self.num_heads)
        k = self._split(x, self.k, self.num_kv_heads)
        v = self._split(x, self.v, self.num_kv_heads)
        cos, sin = rope_angles(positions, self.rotary_dim, self.theta)
        q = apply_rope(q, cos, sin, self.rotary_dim, self.rope_style)
        k = apply_rope(k, cos, sin, self.rotary_dim, self.rope_style)
        q = shard(q, ("batch", "length", "heads", "head_dim"))
        k = shard(k, ("batch", "length", "kv", "head_dim"))
        v = shard(v, ("batch", "length", "kv", "head_dim"))
        return q, k, v

    def __call__(self, x, positions, kv_cache=None, lengths=None, mask=None):
        """x [B,T,D]; positions [B,T]; mask [B,T] (True = attend to that key; no cache). With kv_cache=(k,v) and
        lengths [B] (causal only), returns (out, (k,v)); with a `LayerCache` (the stacked cache and a layer index),
        returns (out, the LayerCache with this layer's new slots written)."""
        B, T, _ = x.shape
        _check_mask(mask, B, T, "attention mask")
        q, k, v = self.qkv(x, positions)
        if kv_cache is None:
            k_all, v_all, k_pos = k, v, positions
        else:
            if not self.causal or mask is not None:
                raise ConfigError("a KV cache needs causal attention without a key mask (causal=False is an "
                                  "encoder: run it on whole sequences)")
            if isinstance(kv_cache, LayerCache):  # the decoder's stacked cache, written in place (jaxlm/nn/decode.py)
                kv_cache = kv_cache.write(k, v, lengths)
                if T == 1:  # decode: read this layer's filled slots straight from the stack
                    o = decode_attend(q, kv_cache, lengths + 1, self.scale, self.bf16_round)
                    return self._out(o), kv_cache
                k_all, v_all = kv_cache.layer_kv()
            else:
                k_all = write_cache(kv_cache[0], k, lengths)
                v_all = write_cache(kv_cache[1], v, lengths)
                kv_cache = (k_all, v_all)
            # slot index == position: the caller passes positions = lengths[:, None] + arange(T)
            k_pos = jnp.broadcast_to(jnp.arange(k_all.shape[1], dtype=jnp.int32), (B, k_all.shape[1]))
        o = attend(q, k_all.astype(q.dtype), v_all.astype(q.dtype), positions, k_pos, self.scale, self.bf16_round,
                   causal=self.causal, kv_mask=mask, impl=self.attention_impl)
        return self._out(o), kv_cache

    def probs(self, x, positions, mask=None):
        """Attention probability matrices [B, H, T, T] (MOHAWK stage 1 targets)."""
        q, k, _ = self.qkv(x, positions)
        G = self.num_heads // self.num_kv_heads
        k = jnp.repeat(k, G, axis=2)
        s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * self.scale
        m = score_mask(positions, positions, self.causal, mask)
        return jax.nn.softmax(s if m is None else jnp.where(m[:, None], s, NEG), axis=-1)


class CrossAttention(_Heads):
    """Queries from x [B, T, dim], keys/values from a memory [B, S, memory_dim] with an optional memory mask [B, S]
    (True = attend). No positions: the memory carries its own (Q-Former queries, conditional diffusion). Grouped-query
    when num_kv_heads < num_heads."""

    def __init__(self, dim: int, num_heads: int, *, memory_dim: int | None = None, num_kv_heads: int | None = None,
                 head_dim: int | None = None, qkv_bias: bool = False, out_bias: bool = False,
                 scale_power: float = 0.5, init_std: float = 0.02, dtype="float32", param_dtype="float32",
                 rngs: nnx.Rngs):
        head_dim = dim // num_heads if head_dim is None else head_dim
        self._build(dim, dim if memory_dim is None else memory_dim, num_heads,
                    num_heads if num_kv_heads is None else num_kv_heads, head_dim, qkv_bias=qkv_bias,
                    out_bias=out_bias, scale_power=scale_power, init_std=init_std, dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)

    @classmethod
    def from_config(cls, cfg, memory_dim: int | None = None, *, rngs: nnx.Rngs) -> "CrossAttention":
        """Head layout, biases, scale and dtypes of a decoder config; keys/values read memory_dim wide memories."""
        return cls(cfg.hidden_size, cfg.num_heads, memory_dim=memory_dim, num_kv_heads=cfg.num_kv_heads,
                   head_dim=cfg.head_dim, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias,
                   scale_power=cfg.attn_scale_power, init_std=cfg.init_std, dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, rngs=rngs)

    def memory_kv(self, memory):
        """Keys and values [B, S, KV, D] of a memory (compute once, reuse for every query step)."""
        names = ("batch", "length", "kv", "head_dim")
        return (shard(self._split(memory, self.k, self.num_kv_heads), names),
                shard(self._split(memory, self.v, self.num_kv_heads), names))

    def __call__(self, x, memory=None, memory_mask=None, *, kv=None):
        """x [B, T, dim]; memory [B, S, memory_dim] (or its precomputed kv=memory_kv(memory)) -> [B, T, dim]."""
        if (memory is None) == (kv is None):
            raise ShapeError("CrossAttention: give memory [B, S, memory_dim] or kv=memory_kv(memory), exactly one")
        if memory is not None:
            if memory.ndim != 3 or memory.shape[0] != x.shape[0] or memory.shape[-1] != self.k.kernel.shape[0]:
                raise ShapeError(f"CrossAttention: memory has shape {tuple(memory.shape)}; expected "
                                 f"[{x.shape[0]}, S, {self.k.kernel.shape[0]}] for queries of shape {tuple(x.shape)}")
            kv = self.memory_kv(memory)
        k, v = kv
        _check_mask(memory_mask, k.shape[0], k.shape[1], "memory_mask")
        q = shard(self._split(x, self.q, self.num_heads), ("batch", "length", "heads", "head_dim"))
        o = attend(q, k.astype(q.dtype), v.astype(q.dtype), scale=self.scale, causal=False, kv_mask=memory_mask)
        return self._out(o)


__all__ = ["Attention", "CrossAttention", "attend", "resolve_attention_impl", "score_mask", "write_cache"]
