"""Dense layer with logical axis names; kernel stored [in, out] (y = x @ W + b).

`dense(x, w)` contracts the last axis of x with the first of w. Inputs of rank > 2 are flattened to [N, in] first:
for a 3-D x, `jnp.dot`'s autodiff writes the weight gradient as a transposed [out, N] @ [N, in] product, which XLA
CPU runs as a copy of the [N, out] output gradient plus a slow doubly-transposed dot (in the train step these cost
~40% of the backward); on 2-D operands the gradient is x^T @ dy straight into the kernel's [in, out] layout. Only
the leading axes are merged (the batch axis stays major), so sharded inputs reshape without communication.
"""

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


def dense(x, w):
    """x [..., in] @ w [in, out] -> [..., out], as one 2-D product (see the module docstring)."""
    if x.ndim <= 2:
        return jnp.dot(x, w)
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w)
    return y.reshape(x.shape[:-1] + w.shape[1:])


class Linear(nnx.Module):
    def __init__(self, d_in: int, d_out: int, axes=(None, None), *, bias: bool = False, std: float = 0.02,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel = param(rngs, (d_in, d_out), axes, std, param_dtype)
        self.bias = param(None, (d_out,), axes[1:], dtype=param_dtype, init="zeros") if bias else None
        self.dtype = dtype

    def __call__(self, x):
        y = dense(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y
