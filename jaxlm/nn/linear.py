"""Dense layer with logical axis names; kernel stored [in, out] (y = x @ W + b)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs | None, shape, axes, std: float = 0.02, dtype=jnp.float32, init: str = "normal"):
    """An nnx.Param with logical `axes` metadata. init: normal | zeros | ones."""
    if init == "zeros":
        val = jnp.zeros(shape, dtype)
    elif init == "ones":
        val = jnp.ones(shape, dtype)
    else:
        val = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(val, axes=tuple(axes))


class Linear(nnx.Module):
    def __init__(self, d_in: int, d_out: int, axes=(None, None), *, bias: bool = False, std: float = 0.02,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel = param(rngs, (d_in, d_out), axes, std, param_dtype)
        self.bias = param(None, (d_out,), axes[1:], dtype=param_dtype, init="zeros") if bias else None
        self.dtype = dtype

    def __call__(self, x):
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y
