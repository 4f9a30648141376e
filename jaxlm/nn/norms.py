"""RMSNorm (Llama: variance in float32, weight * normalized) and LayerNorm with optional bias."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.nn.linear import param


class Norm(nnx.Module):
    def __init__(self, dim: int, kind: str = "rms", eps: float = 1e-6, *, bias: bool | None = None,
                 param_dtype=jnp.float32):
        self.kind, self.eps = kind, eps
        self.scale = param(None, (dim,), ("norm",), dtype=param_dtype, init="ones")
        use_bias = (kind == "layer") if bias is None else bias
        self.bias = param(None, (dim,), ("norm",), dtype=param_dtype, init="zeros") if use_bias else None

    def __call__(self, x):
        dtype = x.dtype
        h = x.astype(jnp.float32)
        if self.kind == "rms":
            h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        else:
            mu = jnp.mean(h, axis=-1, keepdims=True)
            h = h - mu
            h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        h = h * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            h = h + self.bias[...].astype(jnp.float32)
        return h.astype(dtype)
