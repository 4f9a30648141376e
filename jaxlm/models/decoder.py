"""The one decoder-only language model; every family is a DecoderConfig preset.

Layers are stacked (leading 'layers' axis) and run with `jax.lax.scan`, so compile time does not grow with depth.
MobiLlama's shared FFN is a single MLP held by the model (one set of parameters) and closed over by the scan body.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import DecoderConfig
from jaxlm.nn import MLP, Attention, Linear, Norm, param
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

    def __call__(self, x, positions, kv=None, lengths=None, shared_mlp=None):
        mlp = self.mlp if self.mlp is not None else shared_mlp
        h = self.attn_norm(x)
        a, kv = self.attn(h, positions, kv, lengths)
        if self.parallel:
            x = x + a + mlp(h)
        else:
            x = x + a
            x = x + mlp(self.mlp_norm(x))
        return shard(x, ("batch", "length", "act_embed")), kv


def make_mlp(cfg: DecoderConfig, rngs: nnx.Rngs) -> MLP:
    return MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp, bias=cfg.mlp_bias, std=cfg.init_std,
               dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class DecoderLM(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.init_std, pdt)

        self.layers = stack_layers(lambda r: Block(cfg, rngs=r), cfg.num_layers, rngs)
        self.shared_mlp = make_mlp(cfg, rngs) if cfg.shared_mlp else None
        self.final_norm = Norm(cfg.hidden_size, cfg.norm, cfg.norm_eps, param_dtype=pdt)
        self.lm_head = None if cfg.tie_embeddings else Linear(
            cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), bias=cfg.lm_head_bias, std=cfg.init_std,
            dtype=jnp.dtype(cfg.dtype), param_dtype=pdt, rngs=rngs)

    # -- pieces, usable on their own (distillation, evaluation) --
    def embed_tokens(self, input_ids):
        h = jnp.take(self.embed[...], input_ids, axis=0).astype(jnp.dtype(self.cfg.dtype))
        if self.cfg.embed_scale != 1.0:
            h = h * self.cfg.embed_scale
        return shard(h, ("batch", "length", "act_embed"))

    def head(self, h):
        h = self.final_norm(h)
        if self.lm_head is None:
            dt = jnp.dtype(self.cfg.dtype)
            logits = jnp.dot(h.astype(dt), self.embed[...].astype(dt).T)
        else:
            logits = self.lm_head(h)
        logits = logits.astype(jnp.float32)
        if self.cfg.logit_scale != 1.0:
            logits = logits * self.cfg.logit_scale
        return shard(logits, ("batch", "length", "vocab"))

    def __call__(self, input_ids, positions=None, cache: KVCache | None = None, *, return_hidden: bool = False):
        """input_ids [B, T] -> logits [B, T, V] float32 (and the updated cache when one is given).

        Without a cache, positions default to arange(T). With a cache, new tokens go to slots
        cache.lengths[b] + t and positions are those slots; the returned cache has lengths + T.
        """
        B, T = input_ids.shape
        if cache is not None:
            positions = cache.lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
        elif positions is None:
            positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        h = self.embed_tokens(input_ids)
        gdef, lstate = nnx.split(self.layers)
        shared = self.shared_mlp

        def body(carry, xs):
            x, hiddens = carry, None
            st, kv = xs
            blk = nnx.merge(gdef, st)
            lengths = None if cache is None else cache.lengths
            y, kv = blk(x, positions, kv, lengths, shared)
            return y, (kv, x if return_hidden else None)

        if self.cfg.remat:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        kvs = None if cache is None else (cache.k, cache.v)
        h, (new_kv, hiddens) = jax.lax.scan(body, h, (lstate, kvs))
        logits = self.head(h)
        new_cache = None if cache is None else KVCache(new_kv[0], new_kv[1], cache.lengths + T)
        if return_hidden:
            return logits, new_cache, hiddens, h
        return (logits, new_cache) if cache is not None else logits


# ----------------------------------------------------------------------------- pure entry points
# Jitted code takes (graphdef, state, inputs): graphdef is static (hashable), state is a pytree of arrays.
def _forward(graphdef, state, input_ids, positions=None):
    return nnx.merge(graphdef, state)(input_ids, positions)


def _forward_cached(graphdef, state, input_ids, cache):
    return nnx.merge(graphdef, state)(input_ids, cache=cache)


forward = jax.jit(_forward, static_argnums=0)
forward_cached = jax.jit(_forward_cached, static_argnums=0, donate_argnums=3)
