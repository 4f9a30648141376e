"""The one decoder-only language model; every family is a DecoderConfig preset.

Layers are stacked (leading 'layers' axis) and run with `jax.lax.scan`, so compile time does not grow with depth.
MobiLlama's shared FFN is a single MLP held by the model (one set of parameters) and closed over by the scan body.
The embedding and head come from the shared `LMShell`; inputs are token ids, input embeddings (`embeds=`) or ids
after a prefix of embeddings (`prefix_embeds=`, e.g. image features from a vision encoder). `cfg.causal=False` runs
the same stack as a bidirectional encoder (with an optional key padding `mask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import DecoderConfig
from jaxlm.errors import ConfigError
from jaxlm.models.shell import LMShell, ShellConfig, sequence_positions
from jaxlm.nn import MLP, Attention, Norm
from jaxlm.nn.decode import LayerCache
from jaxlm.nn.stack import stack_layers
from jaxlm.sharding import shard


@jax.tree_util.register_dataclass
@dataclass
class KVCache:
    """Stacked per-layer keys/values [L, B, S, KV, D] and the number of filled slots per row [B]."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @classmethod
    def zeros(cls, cfg: DecoderConfig, batch: int, max_len: int, dtype=None):
        dtype = jnp.dtype(cfg.dtype) if dtype is None else dtype
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


class Block(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        self.attn_norm = Norm(cfg.hidden_size, cfg.norm, cfg.norm_eps, param_dtype=pdt)
        self.attn = Attention(cfg, rngs=rngs)
        self.parallel = cfg.block == "parallel"
        self.mlp_norm = None if self.parallel else Norm(cfg.hidden_size, cfg.norm, cfg.norm_eps, param_dtype=pdt)
        self.mlp = None if cfg.shared_mlp else make_mlp(cfg, rngs)

    def __call__(self, x, positions, kv=None, lengths=None, shared_mlp=None, mask=None):
        mlp = self.mlp if self.mlp is not None else shared_mlp
        h = self.attn_norm(x)
        a, kv = self.attn(h, positions, kv, lengths, mask)
        if self.parallel:
            x = x + a + mlp(h)
        else:
            x = x + a
            x = x + mlp(self.mlp_norm(x))
        return shard(x, ("batch", "length", "act_embed")), kv


def make_mlp(cfg: DecoderConfig, rngs: nnx.Rngs) -> MLP:
    return MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp, bias=cfg.mlp_bias, std=cfg.init_std,
               dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class DecoderLM(LMShell):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.init_embedding(ShellConfig.of(cfg), rngs)
        self.layers = stack_layers(lambda r: Block(cfg, rngs=r), cfg.num_layers, rngs)
        self.shared_mlp = make_mlp(cfg, rngs) if cfg.shared_mlp else None
        self.init_head(rngs)

    # embed_tokens(ids), embed_inputs(ids, embeds, prefix_embeds) and head(h): see LMShell (usable on their own by
    # distillation and evaluation)

    def __call__(self, input_ids=None, positions=None, cache: KVCache | None = None, *, embeds=None,
                 prefix_embeds=None, mask=None, return_hidden: bool = False):
        """input_ids [B, T] (or embeds [B, T, D]; prefix_embeds [B, P, D] go first) -> logits [B, P + T, V]
        float32 (and the updated cache when one is given).

        Without a cache, positions default to arange(P + T). With a cache, new inputs go to slots
        cache.lengths[b] + t and positions are those slots; the returned cache has lengths + P + T.
        mask [B, P + T] (True = attend; no cache) drops padded keys, e.g. for a bidirectional encoder.
        """
        h = self.embed_inputs(input_ids, embeds, prefix_embeds)
        B, T = h.shape[:2]
        if cache is not None:
            if not self.cfg.causal:
                raise ConfigError("DecoderLM with causal=False is an encoder: it has no KV cache")
            positions = sequence_positions(B, T, cache.lengths)
        elif positions is None:
            positions = sequence_positions(B, T)
        gdef, lstate = nnx.split(self.layers)
        shared = self.shared_mlp

        def body(carry, xs):
            # the stacked cache rides in the carry (a LayerCache) and each layer writes its slots in place
            x, kv = carry
            st, i = xs
            blk = nnx.merge(gdef, st)
            lengths = None if cache is None else cache.lengths
            y, kv = blk(x, positions, None if kv is None else kv.at_layer(i), lengths, shared, mask)
            return (y, kv), (x if return_hidden else None)

        if self.cfg.remat:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        kv0 = None if cache is None else LayerCache(cache.k, cache.v, jnp.zeros((), jnp.int32))
        layer_ids = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
        (h, new_kv), hiddens = jax.lax.scan(body, (h, kv0), (lstate, layer_ids))
        logits = self.head(h)
        new_cache = None if cache is None else KVCache(new_kv.k, new_kv.v, cache.lengths + T)
        if return_hidden:
            return logits, new_cache, hiddens, h
        return (logits, new_cache) if cache is not None else logits


# ----------------------------------------------------------------------------- pure entry points
# Jitted code takes (graphdef, state, inputs): graphdef is static (hashable), state is a pytree of arrays.
# input_ids may be None when embeds are given; embeds / prefix_embeds / mask as in DecoderLM.__call__.
def _forward(graphdef, state, input_ids=None, positions=None, *, embeds=None, prefix_embeds=None, mask=None):
    return nnx.merge(graphdef, state)(input_ids, positions, embeds=embeds, prefix_embeds=prefix_embeds, mask=mask)


def _forward_cached(graphdef, state, input_ids, cache, *, embeds=None, prefix_embeds=None):
    return nnx.merge(graphdef, state)(input_ids, cache=cache, embeds=embeds, prefix_embeds=prefix_embeds)


forward = jax.jit(_forward, static_argnums=0)
forward_cached = jax.jit(_forward_cached, static_argnums=0, donate_argnums=3)
