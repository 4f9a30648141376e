"""Timestep embeddings: sinusoidal features (DDPM / ADM conventions) and the MLP that follows them.

timestep_embedding: freqs_i = exp(-ln(max_period) · i / (half - freq_shift)), i < half = dim // 2;
features [sin(t·f), cos(t·f)] (flip_sin_to_cos puts cos first); odd dims get one zero column.
  DDPM (Ho et al. 2020, tensorflow code): freq_shift=1, flip_sin_to_cos=False
  ADM  (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021): freq_shift=0, flip_sin_to_cos=True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ConfigError
from jaxlm.nn.linear import Linear


def timestep_embedding(t, dim: int, *, max_period: float = 10000.0, flip_sin_to_cos: bool = False,
                       freq_shift: float = 1.0, scale: float = 1.0):
    """[B] timesteps (int or float, e.g. t or t/T·1000) -> [B, dim] float32 sinusoidal features."""
    if dim < 2:
        raise ConfigError(f"dim={dim}: a timestep embedding needs at least 2 features")
    half = dim // 2
    if half - freq_shift <= 0:
        raise ConfigError(f"freq_shift={freq_shift}: must be below dim // 2 = {half}")
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = scale * jnp.asarray(t, jnp.float32).reshape(-1)[:, None] * freqs[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepMLP(nnx.Module):
    """Linear(freq_dim -> hidden) · SiLU · Linear(hidden -> out): the embedding MLP of DDPM / ADM / DiT."""

    def __init__(self, freq_dim: int, hidden: int, out: int | None = None, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        out = hidden if out is None else out
        self.fc1 = Linear(freq_dim, hidden, (None, "mlp"), bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = Linear(hidden, out, ("mlp", "embed"), bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, emb):
        return self.fc2(jax.nn.silu(self.fc1(emb)))


class TimestepEmbedder(nnx.Module):
    """t [B] -> [B, out]: sinusoidal features of width freq_dim, then TimestepMLP."""

    def __init__(self, freq_dim: int, hidden: int, out: int | None = None, *, max_period: float = 10000.0,
                 flip_sin_to_cos: bool = True, freq_shift: float = 0.0, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.freq_dim, self.max_period = freq_dim, max_period
        self.flip_sin_to_cos, self.freq_shift = flip_sin_to_cos, freq_shift
        self.mlp = TimestepMLP(freq_dim, hidden, out, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, t):
        emb = timestep_embedding(t, self.freq_dim, max_period=self.max_period, flip_sin_to_cos=self.flip_sin_to_cos,
                                 freq_shift=self.freq_shift)
        return self.mlp(emb)
