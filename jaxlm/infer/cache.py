"""The cache interface used by generation.

Generation needs five things from a model's cache, whatever it holds (attention keys/values that grow with the
sequence, or a fixed-size recurrent state such as Mamba-2's conv + SSM state):

- ``init_cache(model_or_cfg, batch, max_len)``: an empty cache for `batch` rows and room for `max_len` tokens;
- ``cache.lengths``: int32 [B], the number of tokens already consumed per row (the position of the next token);
- ``with_lengths(cache, lengths)``: the same cache with other lengths (functional, nothing is mutated);
- ``resize(cache, max_len)``: grow or shrink the token capacity (a no-op for recurrent state);
- ``put_rows(cache, rows, sub)`` / ``take_rows(cache, rows)``: write/read a sub-batch of rows (used to prefill new
  requests into free rows of a running batch).

A cache class describes itself with a `CacheSpec`: which pytree fields have a batch axis and which have a token
(sequence) axis, and whether a right-padded prefill is harmless (`ragged_prefill`: true for attention, where
padded slots are never attended to once `lengths` is reset; false for recurrent state, which would absorb the
padding, so generation prefills such caches one group of equal-length prompts at a time).

A class can carry its spec as a class attribute ``cache_spec`` and its constructor as a classmethod
``init(cfg, batch, max_len)``; `register_cache` does the same from outside (this is how the decoder's `KVCache`,
whose module this package does not own, is registered below). Models name their cache class with an attribute
``cache_class`` or are looked up in `_MODEL_CACHES` (DecoderLM -> KVCache).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from jaxlm.infer.layers import LayerListCache
from jaxlm.models.decoder import DecoderLM, KVCache


@runtime_checkable
class Cache(Protocol):
    """What generation reads directly from a cache: per-row lengths (and it must be a pytree dataclass)."""

    lengths: jax.Array


@dataclass(frozen=True)
class CacheSpec:
    batch_axes: dict[str, int]                  # field -> axis holding the batch rows
    seq_axes: dict[str, int] = field(default_factory=dict)   # field -> axis holding token slots
    ragged_prefill: bool = True
    init: Callable[..., Any] | None = None      # (cfg, batch, max_len) -> cache


_SPECS: dict[type, CacheSpec] = {}
_MODEL_CACHES: dict[type, type] = {}


def register_cache(cls: type, spec: CacheSpec, model_cls: type | None = None) -> None:
    _SPECS[cls] = spec
    if model_cls is not None:
        _MODEL_CACHES[model_cls] = cls


def spec_of(cache_or_cls) -> CacheSpec:
    cls = cache_or_cls if isinstance(cache_or_cls, type) else type(cache_or_cls)
    if cls in _SPECS:
        return _SPECS[cls]
    spec = getattr(cls, "cache_spec", None)
    if isinstance(spec, CacheSpec):
        return spec
    raise TypeError(f"{cls.__name__} is not a generation cache: give it a `cache_spec` (jaxlm.infer.cache.CacheSpec) "
                    f"or call jaxlm.infer.cache.register_cache")


def cache_class_for(model) -> type:
    cls = getattr(model, "cache_class", None)
    if cls is not None:
        return cls
    for mcls, ccls in _MODEL_CACHES.items():
        if isinstance(model, mcls):
            return ccls
    raise TypeError(f"no cache class known for {type(model).__name__}: set `cache_class` on the model or call "
                    f"register_cache(..., model_cls=...)")


def init_cache(model, batch: int, max_len: int, cfg=None):
    """An empty cache for `model` (a module; its `.cfg` is used unless `cfg` is given)."""
    cls = cache_class_for(model)
    cfg = model.cfg if cfg is None else cfg
    spec = spec_of(cls)
    if spec.init is not None:
        return spec.init(cfg, batch, max_len)
    return cls.init(cfg, batch, max_len)


def with_lengths(cache, lengths):
    return dataclasses.replace(cache, lengths=jnp.asarray(lengths, jnp.int32))


# A cache field is one array or a pytree of arrays sharing its axes (LayerListCache: a tuple of per-layer arrays).
def map_fields(cache, axes: dict[str, int], fn, *others):
    """The cache with fn(array, axis, *matching arrays of `others`) applied to every array of the fields in `axes`."""
    upd = {n: jax.tree.map(lambda a, *o, ax=ax: fn(a, ax, *o), getattr(cache, n), *(getattr(c, n) for c in others))
           for n, ax in axes.items()}
    return dataclasses.replace(cache, **upd)


def capacity(cache) -> int | None:
    """Token slots per row, or None for a cache without a token axis (recurrent state)."""
    spec = spec_of(cache)
    for name, ax in spec.seq_axes.items():
        return jax.tree.leaves(getattr(cache, name))[0].shape[ax]
    return None


def _fit(a, ax: int, max_len: int):
    n = a.shape[ax]
    if max_len > n:
        pad = [(0, 0)] * a.ndim
        pad[ax] = (0, max_len - n)
        return jnp.pad(a, pad)
    return jax.lax.slice_in_dim(a, 0, max_len, axis=ax) if max_len < n else a


def resize(cache, max_len: int):
    """Pad (with zeros) or cut every token axis to `max_len` slots. Slots >= lengths hold nothing of value."""
    spec = spec_of(cache)
    if capacity(cache) in (None, max_len):
        return cache
    return map_fields(cache, spec.seq_axes, lambda a, ax: _fit(a, ax, max_len))


def take_rows(cache, rows):
    rows = jnp.asarray(rows, jnp.int32)
    out = map_fields(cache, spec_of(cache).batch_axes, lambda a, ax: jnp.take(a, rows, axis=ax))
    return dataclasses.replace(out, lengths=cache.lengths[rows])


def _put(a, ax: int, s, rows):
    a_t, s_t = jnp.moveaxis(a, ax, 0), jnp.moveaxis(s, ax, 0)
    return jnp.moveaxis(a_t.at[rows].set(s_t.astype(a.dtype)), 0, ax)


def put_rows(cache, rows, sub):
    """Write the rows of `sub` (a cache of the same kind, same capacity; a stacked KVCache into a LayerListCache
    is converted) into rows `rows` of `cache`."""
    if isinstance(cache, LayerListCache) and isinstance(sub, KVCache):
        sub = LayerListCache.from_stacked(sub)
    rows = jnp.asarray(rows, jnp.int32)
    out = map_fields(cache, spec_of(cache).batch_axes, lambda a, ax, s: _put(a, ax, s, rows), sub)
    return dataclasses.replace(out, lengths=cache.lengths.at[rows].set(sub.lengths))


# The decoder's attention cache: k/v [L, B, S, KV, D].
register_cache(KVCache, CacheSpec(batch_axes={"k": 1, "v": 1}, seq_axes={"k": 2, "v": 2}, ragged_prefill=True,
                                  init=lambda cfg, b, s: KVCache.zeros(cfg, b, s)), model_cls=DecoderLM)
# The same per layer (the unrolled decode step, jaxlm/infer/layers.py): tuples of L arrays [B, S, KV, D].
register_cache(LayerListCache, CacheSpec(batch_axes={"k": 0, "v": 0}, seq_axes={"k": 1, "v": 1},
                                         ragged_prefill=True, init=LayerListCache.zeros))


def _register_mamba2():
    """Mamba-2's recurrent state (conv [L, B, K-1, C], ssm [L, B, H, P, N]): no token axis, no ragged prefill."""
    try:
        from jaxlm.models.mamba2 import Mamba2LM, SSMCache
    except ImportError:  # the SSM models are optional for generation
        return
    register_cache(SSMCache, CacheSpec(batch_axes={"conv": 1, "ssm": 1}, ragged_prefill=False,
                                       init=lambda cfg, b, s: SSMCache.zeros(cfg, b)), model_cls=Mamba2LM)


_register_mamba2()


def cache_logical_axes(cache) -> dict[str, tuple]:
    """Logical axis names of the cache fields for sharding (batch rows over data/fsdp, kv heads over tensor)."""
    if isinstance(cache, KVCache):
        names = ("layers", "batch", "length", "kv", "head_dim")
        return {"k": names, "v": names, "lengths": ("batch",)}
    names = getattr(type(cache), "logical_axes", None)
    if names:
        return dict(names)
    spec = spec_of(cache)  # default: shard only the batch rows
    out = {n: tuple("batch" if i == ax else None for i in range(getattr(cache, n).ndim))
           for n, ax in spec.batch_axes.items()}
    out["lengths"] = ("batch",)
    return out
