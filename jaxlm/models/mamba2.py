"""Mamba-2 language model, numerically matching transformers' `Mamba2ForCausalLM` (its pure-torch path).

embeddings -> L x [x + Mamba2Mixer(RMSNorm(x))] -> RMSNorm (norm_f) -> lm_head (tied to the embeddings by default).
Layers are stacked (leading axis L) and run with `jax.lax.scan`, like `DecoderLM`.

Generation keeps an `SSMCache` (per layer: conv state [B, K-1, conv_dim] and SSM state [B, H, P, N]); its size does not
depend on the number of tokens seen. `model(ids, cache=cache)` with T == 1 takes the recurrent single-step path, with
T > 1 the chunked path seeded by the cached state (a prefill, or a continuation).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import MAMBA2_PRESETS, Mamba2Config, mamba2_preset  # noqa: F401  (re-exported: old import path)
from jaxlm.models.shell import LMShell, ShellConfig
from jaxlm.nn import Norm
from jaxlm.nn.ssd import Mamba2Mixer
from jaxlm.nn.stack import stack_layers


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


class Mamba2LM(LMShell):
    def __init__(self, cfg: Mamba2Config, *, rngs: nnx.Rngs = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.cfg = cfg
        self.init_embedding(ShellConfig.of(cfg), rngs)
        self.layers = stack_layers(lambda r: Mamba2Block(cfg, rngs=r), cfg.num_layers, rngs)
        self.init_head(rngs)

    def __call__(self, input_ids=None, cache: SSMCache | None = None, *, embeds=None, prefix_embeds=None,
                 return_hidden: bool = False):
        """input_ids [B, T] (or embeds [B, T, D]; prefix_embeds [B, P, D] go first) -> logits [B, P + T, V]
        float32; with a cache -> (logits, new cache). return_hidden=True additionally returns the per-layer block
        inputs [L, B, T, D]."""
        h = self.embed_inputs(input_ids, embeds, prefix_embeds)
        T = h.shape[1]
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
