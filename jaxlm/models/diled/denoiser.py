"""MLPSkipNet: EDDPM's latent denoiser (after DiffAE's latent DDIM net), an MLP that re-feeds its input x at every
layer after the first and is conditioned on the timestep by a multiplicative (1 + cond) scale before LayerNorm.

Original (Text/.../modules/vae.py `MLPSkipNet`, `MLPLNAct`): time features `timestep_embedding(t/T, 64)` (cos
first, frequencies exp(-ln(10000)·i/32)) -> Linear(64, d) · SiLU · Linear(d, d) = cond; layer i: h = cat(h, x) for
i ≥ 1; Linear; for conditioned layers h = h · (1 + Linear(SiLU(cond))) then LayerNorm; SiLU (none on the last layer,
which maps back to d and is neither normed nor conditioned). Kaiming-normal (fan_in, ReLU gain) weights; biases
are zero here (PyTorch draws them uniformly). Paper scale: 20 layers of width 2048 (`MLPSKIPNET_PAPER`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ConfigError
from jaxlm.nn import Linear, Norm
from jaxlm.nn.time import TimestepMLP, timestep_embedding


@dataclass(frozen=True)
class MLPSkipNetConfig:
    latent_dim: int = 32
    hidden: int = 2048
    num_layers: int = 20
    time_embed_dim: int = 64
    condition_bias: float = 1.0

    def __post_init__(self):
        if self.num_layers < 2:
            raise ConfigError(f"num_layers={self.num_layers}: MLPSkipNet needs at least 2 layers")


MLPSKIPNET_PAPER = dict(hidden=2048, num_layers=20)   # the original (latent 128 for text, 32 for proteins)
MLPSKIPNET_TINY = dict(hidden=128, num_layers=4)


def _kaiming(d_in, d_out, axes, rngs):
    return Linear(d_in, d_out, axes, bias=True, std=math.sqrt(2.0 / d_in), rngs=rngs)


class MLPLNAct(nnx.Module):
    def __init__(self, d_in, d_out, cond_dim, *, act: bool, norm: bool, cond: bool, condition_bias: float,
                 rngs: nnx.Rngs):
        self.linear = _kaiming(d_in, d_out, ("embed", "mlp"), rngs)
        self.cond = _kaiming(cond_dim, d_out, ("embed", "mlp"), rngs) if cond else None
        self.norm = Norm(d_out, "layer", 1e-5) if norm else None
        self.act, self.condition_bias = act, condition_bias

    def __call__(self, x, cond):
        x = self.linear(x)
        if self.cond is not None:
            c = self.cond(jax.nn.silu(cond) if self.act else cond)
            x = x * (self.condition_bias + c)
        if self.norm is not None:
            x = self.norm(x)
        return jax.nn.silu(x) if self.act else x


class MLPSkipNet(nnx.Module):
    """eps_hat = net(x [B, d], t [B] float — the original passes t / T)."""

    def __init__(self, cfg: MLPSkipNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, h, n = cfg.latent_dim, cfg.hidden, cfg.num_layers
        self.time_embed = TimestepMLP(cfg.time_embed_dim, d, d, rngs=rngs)
        layers = []
        for i in range(n):
            last = i == n - 1
            a = (d if i == 0 else h) + (d if i >= 1 else 0)
            layers.append(MLPLNAct(a, d if last else h, d, act=not last, norm=not last, cond=not last,
                                   condition_bias=cfg.condition_bias, rngs=rngs))
        self.layers = nnx.List(layers) if hasattr(nnx, "List") else layers

    def __call__(self, x, t):
        emb = timestep_embedding(t, self.cfg.time_embed_dim, flip_sin_to_cos=True, freq_shift=0.0)
        cond = self.time_embed(emb)
        h = x
        for i, layer in enumerate(self.layers):
            if i >= 1:
                h = jnp.concatenate([h, x], axis=-1)
            h = layer(h, cond)
        return h


__all__ = ["MLPSkipNet", "MLPSkipNetConfig", "MLPSKIPNET_PAPER", "MLPSKIPNET_TINY"]
