"""Feed-forward blocks: SwiGLU (down(silu(gate x) * up x)) and GELU-tanh (down(gelu(up x)))."""

from __future__ import annotations

import jax
from flax import nnx

from jaxlm.nn.linear import Linear


class MLP(nnx.Module):
    def __init__(self, d: int, f: int, kind: str = "swiglu", *, bias: bool = False, std: float = 0.02,
                 dtype=None, param_dtype=None, rngs: nnx.Rngs):
        kw = dict(bias=bias, std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.kind = kind
        self.gate = Linear(d, f, ("embed", "mlp"), **kw) if kind == "swiglu" else None
        self.up = Linear(d, f, ("embed", "mlp"), **kw)
        self.down = Linear(f, d, ("mlp", "embed"), **kw)

    def __call__(self, x):
        if self.kind == "swiglu":
            h = jax.nn.silu(self.gate(x)) * self.up(x)
        else:
            h = jax.nn.gelu(self.up(x), approximate=True)
        return self.down(h)
