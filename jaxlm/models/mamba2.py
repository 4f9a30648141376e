"""Mamba-2 language model, numerically matching transformers' `Mamba2ForCausalLM` (its pure-torch path).

embeddings -> L x [x + Mamba2Mixer(RMSNorm(x))] -> RMSNorm (norm_f) -> lm_head (tied to the embeddings by default).
Layers are stacked (leading axis L) and run with `jax.lax.scan`, like `DecoderLM`.

Generation keeps an `SSMCache` (per layer: conv state [B, K-1, conv_dim] and SSM state [B, H, P, N]); its size does not
depend on the number of tokens seen. `model(ids, cache=cache)` with T == 1 takes the recurrent single-step path, with
T > 1 the chunked path seeded by the cached state (a prefill, or a continuation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ConfigError
from jaxlm.nn import Linear, Norm, param
from jaxlm.nn.ssd import Mamba2Mixer
from jaxlm.nn.stack import stack_layers
from jaxlm.sharding import shard


@dataclass(frozen=True)
class Mamba2Config:
    vocab_size: int = 50288
    hidden_size: int = 768
    num_layers: int = 24
    num_heads: int = 24
    head_dim: int = 64
    state_size: int = 128
    expand: int = 2
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 256
    norm_eps: float = 1e-5
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    time_step_limit: tuple = (0.0, float("inf"))
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    # transformers 5.x's MambaRMSNormGated normalizes groups of d_inner // n_groups channels (as mamba_ssm does);
    # older transformers normalized the whole d_inner. Only matters for n_groups > 1.
    grouped_norm: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "state_size", "expand",
                     "n_groups", "conv_kernel", "chunk_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"Mamba2Config.{name}={getattr(self, name)} must be positive")
        if self.hidden_size * self.expand != self.num_heads * self.head_dim:
            raise ConfigError(f"Mamba2Config: hidden_size*expand ({self.hidden_size * self.expand}) must equal "
                              f"num_heads*head_dim ({self.num_heads * self.head_dim})")
        if self.num_heads % self.n_groups:
            raise ConfigError(f"Mamba2Config: num_heads={self.num_heads} is not a multiple of n_groups={self.n_groups}")
        if self.hidden_act not in ("silu", "swish", "identity"):
            raise ConfigError(f"Mamba2Config.hidden_act={self.hidden_act!r}: expected 'silu' or 'identity'")

    @property
    def d_inner(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.state_size

    def replace(self, **kw) -> "Mamba2Config":
        unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s) {sorted(unknown)} for Mamba2Config")
        return dataclasses.replace(self, **kw)


MAMBA2_PRESETS = {
    # AntonV/mamba2-130m-hf
    "mamba2-130m": Mamba2Config(),
    "mamba2-tiny": Mamba2Config(vocab_size=256, hidden_size=64, num_layers=2, num_heads=8, head_dim=16,
                                state_size=16, n_groups=2, chunk_size=16),
}


def mamba2_preset(name: str, **overrides) -> Mamba2Config:
    if name not in MAMBA2_PRESETS:
        raise ConfigError(f"unknown Mamba-2 preset {name!r}; known: {sorted(MAMBA2_PRESETS)}")
    cfg = MAMBA2_PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg


@jax.tree_util.register_dataclass
@dataclass
class SSMCache:
    """Recurrent generation state for every layer: conv [L, B, K-1, conv_dim], ssm [L, B, H, P, N] (float32) and the
    number of tokens consumed per row [B]. Constant size: it does not grow with the sequence."""

    conv: jax.Array
    ssm: jax.Array
    lengths: jax.Array

    @classmethod
    def zeros(cls, cfg: Mamba2Config, batch: int):
        return cls(jnp.zeros((cfg.num_layers, batch, cfg.conv_kernel - 1, cfg.conv_dim), jnp.float32),
                   jnp.zeros((cfg.num_layers, batch, cfg.num_heads, cfg.head_dim, cfg.state_size), jnp.float32),
                   jnp.zeros((batch,), jnp.int32))

    def nbytes(self) -> int:
        return int(self.conv.nbytes + self.ssm.nbytes + self.lengths.nbytes)


def make_mixer(cfg: Mamba2Config, rngs: nnx.Rngs) -> Mamba2Mixer:
    return Mamba2Mixer(cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.state_size, cfg.n_groups, cfg.conv_kernel,
                       cfg.chunk_size, cfg.norm_eps, cfg.use_bias, cfg.use_conv_bias, cfg.time_step_limit,
                       cfg.hidden_act, cfg.d_inner // cfg.n_groups if cfg.grouped_norm else None, cfg.init_std,
                       jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), rngs=rngs)


class Mamba2Block(nnx.Module):
    def __init__(self, cfg: Mamba2Config, *, rngs: nnx.Rngs):
        self.norm = Norm(cfg.hidden_size, "rms", cfg.norm_eps, param_dtype=jnp.dtype(cfg.param_dtype))
        self.mixer = make_mixer(cfg, rngs)
        self.residual_in_fp32 = cfg.residual_in_fp32

    def __call__(self, x, state=None, step: bool = False):
        res = x.astype(jnp.float32) if self.residual_in_fp32 else x
        h = self.norm(x)
        if step:
            y, state = self.mixer.step(h, state)
        elif state is not None:
            y, state = self.mixer(h, state)
        else:
            y = self.mixer(h)
        return (res + y).astype(x.dtype), state


class Mamba2LM(nnx.Module):
    def __init__(self, cfg: Mamba2Config, *, rngs: nnx.Rngs = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.init_std, pdt)

        self.layers = stack_layers(lambda r: Mamba2Block(cfg, rngs=r), cfg.num_layers, rngs)
        self.final_norm = Norm(cfg.hidden_size, "rms", cfg.norm_eps, param_dtype=pdt)
        self.lm_head = None if cfg.tie_embeddings else Linear(
            cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), std=cfg.init_std, dtype=jnp.dtype(cfg.dtype),
            param_dtype=pdt, rngs=rngs)

    def embed_tokens(self, ids):
        h = jnp.take(self.embed[...], ids, axis=0).astype(jnp.dtype(self.cfg.dtype))
        return shard(h, ("batch", "length", "act_embed"))

    def head(self, h):
        h = self.final_norm(h)
        dt = jnp.dtype(self.cfg.dtype)
        if self.lm_head is None:
            logits = jnp.dot(h.astype(dt), self.embed[...].astype(dt).T)
        else:
            logits = self.lm_head(h.astype(dt))
        return shard(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def __call__(self, input_ids, cache: SSMCache | None = None, *, return_hidden: bool = False):
        """input_ids [B, T] -> logits [B, T, V] float32; with a cache -> (logits, new cache).
        return_hidden=True additionally returns the per-layer block inputs [L, B, T, D]."""
        B, T = input_ids.shape
        h = self.embed_tokens(input_ids)
        gdef, lstate = nnx.split(self.layers)
        step = cache is not None and T == 1

        def body(x, xs):
            st, s = xs
            blk = nnx.merge(gdef, st)
            if step:
                y, s = blk(x[:, 0], s, step=True)
                y = y[:, None]
            else:
                y, s = blk(x, s)
            return y, (s, x if return_hidden else None)

        states = None if cache is None else (cache.conv, cache.ssm)
        h, (new_states, hiddens) = jax.lax.scan(body, h, (lstate, states))
        logits = self.head(h)
        out = (logits,)
        if cache is not None:
            out += (SSMCache(new_states[0], new_states[1], cache.lengths + T),)
        if return_hidden:
            out += (hiddens,)
        return out[0] if len(out) == 1 else out


__all__ = ["Mamba2Config", "Mamba2LM", "Mamba2Block", "SSMCache", "mamba2_preset", "MAMBA2_PRESETS"]
