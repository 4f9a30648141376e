"""Decode with one buffer per layer: the layer weights and the KV cache as separate arrays, the layers unrolled.

A `DecoderLM` stacks its layers ([L, ...] parameters) and runs them with `lax.scan`. Inside that loop XLA's CPU
backend copies each layer's weights out of the stack before its dots (a dynamic-slice fusion per matrix, then the
dot reads the copy): one decode step reads the layer weights twice and writes them once, and the cache likewise
(the layer's slice is copied out before attention reads it). With one array per layer and the layers unrolled,
every dot and the attention read their operands where they lie: one step reads each weight and each filled cache
byte once and writes only the new slot of each layer's donated cache (`benchmarks/decode_bytes.py` shows it from
the compiled program).

- `LayerListCache`: per-layer keys/values, tuples of L arrays [B, S, KV, D], and the lengths [B]; a generation
  cache (jaxlm.infer.cache) like the stacked `KVCache`, which prefill still fills (then `from_stacked`).
- `split_layers(graphdef, state)`: the per-layer parameter states (copies: one more copy of the layer weights in
  memory while a batch holds them).
- `decode_forward(model, layers, tok, cache)`: the DecoderLM forward for one token per row over them.
- `layer_loop(model, mesh, choice)`: "unrolled" or "scan" for a model; "auto" picks the unrolled step on CPU for a
  DecoderLM of at most `MAX_UNROLLED` layers without a multi-device mesh whose layer weights fit
  `unrolled_fits` (at most min(`MAX_UNROLLED_BYTES` = 2 GiB, 1/8 of host RAM): the per-layer copies double the
  layer weights' memory, e.g. ~27 GB more for a 7B model in float32). Compile time grows with the layers; the
  scan stays for sharded runs and accelerators, where it is not measured. Override with `layer_loop=` on
  `DecodeBatch` / `Generator`, `use_layer_loop(...)` or JAXLM_DECODE_LAYERS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.decoder import DecoderLM, KVCache
from jaxlm.models.shell import sequence_positions
from jaxlm.nn.decode import LayerCache
from kernels.impl import ImplChoice

MAX_UNROLLED = 64
MAX_UNROLLED_BYTES = 2 << 30  # "auto"'s cap on the layer weights copied per layer (see unrolled_fits)
LOOPS = ("auto", "scan", "unrolled")
CHOICE = ImplChoice("decode layer loop", LOOPS, "JAXLM_DECODE_LAYERS")
set_layer_loop, use_layer_loop = CHOICE.set, CHOICE.use


@jax.tree_util.register_dataclass
@dataclass
class LayerListCache:
    """k/v: tuples of L per-layer arrays [B, S, KV, D]; lengths [B] filled slots per row."""

    k: tuple
    v: tuple
    lengths: jax.Array
    logical_axes: ClassVar[dict] = {"k": ("batch", "length", "kv", "head_dim"),
                                    "v": ("batch", "length", "kv", "head_dim"), "lengths": ("batch",)}

    @classmethod
    def from_stacked(cls, c: KVCache) -> "LayerListCache":
        L = c.k.shape[0]
        return cls(tuple(c.k[i] for i in range(L)), tuple(c.v[i] for i in range(L)), c.lengths)

    @classmethod
    def zeros(cls, cfg, batch: int, max_len: int, dtype=None) -> "LayerListCache":
        dtype = jnp.dtype(cfg.dtype) if dtype is None else dtype
        shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        z = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        return cls(z(), z(), jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]


def host_memory_bytes() -> int | None:
    """Physical memory of this host (None where os.sysconf cannot tell)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def unrolled_fits(num_layers: int, layer_bytes: int, host_bytes: int | None = None) -> bool:
    """Whether "auto" may unroll: at most MAX_UNROLLED layers, and layer weights (which the unrolled step holds a
    second copy of) of at most min(MAX_UNROLLED_BYTES, host_bytes / 8)."""
    cap = MAX_UNROLLED_BYTES if host_bytes is None else min(MAX_UNROLLED_BYTES, host_bytes // 8)
    return num_layers <= MAX_UNROLLED and layer_bytes <= cap


def layer_loop(model, mesh=None, choice: str | None = None) -> str:
    """The decode step's layer loop for `model`: "unrolled" (per-layer buffers) or "scan" (see the module doc)."""
    choice = CHOICE.get(choice)
    fits = type(model) is DecoderLM  # decode_forward is DecoderLM's forward: a subclass may run another one
    if choice == "unrolled" and not fits:
        from jaxlm.errors import ConfigError

        raise ConfigError(f"layer_loop='unrolled' needs a DecoderLM (stacked layers, KVCache); got "
                          f"{type(model).__name__}")
    if choice != "auto":
        return choice
    sharded = mesh is not None and mesh.size > 1
    if not fits:
        return "scan"
    layer_bytes = sum(a.size * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(nnx.state(model.layers)))
    small = unrolled_fits(model.cfg.num_layers, layer_bytes, host_memory_bytes())
    return "unrolled" if small and not sharded and jax.default_backend() == "cpu" else "scan"


def split_layers(graphdef, state) -> tuple:
    """Per-layer parameters of a DecoderLM's stacked `layers`: one tuple of arrays per layer (each a copy of its
    slice), in the leaf order of the layers' state. Plain tuples, not nnx States: a jitted call flattens its
    arguments every step, and 30 layers of States cost more there than a small model's step."""
    leaves = jax.tree.leaves(nnx.split(nnx.merge(graphdef, state).layers)[1])
    return tuple(tuple(a[i] for a in leaves) for i in range(leaves[0].shape[0]))


def decode_forward(model: DecoderLM, layers: tuple, tok, cache: LayerListCache):
    """tok [B] at slots cache.lengths -> (float32 logits [B, V], the cache with each layer's new slot written).
    layers: `split_layers`' per-layer arrays (the stacked layer weights in `model` are not read)."""
    h = model.embed_inputs(tok[:, None])
    positions = sequence_positions(h.shape[0], 1, cache.lengths)
    gdef, stacked = nnx.split(model.layers)
    tree = jax.tree.structure(stacked)
    ks, vs = [], []
    for arrays, k, v in zip(layers, cache.k, cache.v):
        blk = nnx.merge(gdef, jax.tree.unflatten(tree, arrays))
        h, kv = blk(h, positions, LayerCache(k, v), cache.lengths, model.shared_mlp)
        ks.append(kv.k)
        vs.append(kv.v)
    return model.head(h)[:, 0], LayerListCache(tuple(ks), tuple(vs), cache.lengths + 1)


__all__ = ["LayerListCache", "decode_forward", "layer_loop", "split_layers", "set_layer_loop", "use_layer_loop",
           "MAX_UNROLLED", "MAX_UNROLLED_BYTES", "unrolled_fits", "host_memory_bytes", "LOOPS"]
