"""jaxlm.nn.linear.dense (rank > 2 inputs flattened to one 2-D product): same values and gradients as jnp.dot."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.nn.linear import Linear, dense

SHAPES = [(5,), (3, 5), (2, 3, 5), (2, 2, 3, 5)]


@jax.jit
def _both(xs, w, gs):
    """For each x: (dense's output and (dx, dw) under cotangent g, the same for jnp.dot), in one compile."""
    out = []
    for x, g in zip(xs, gs):
        pair = []
        for f in (dense, jnp.dot):
            y, vjp = jax.vjp(f, x, w)
            pair.append((y, *vjp(g)))
        out.append(pair)
    return out


def test_dense_values_and_grads_equal_plain_dot():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    gs = [rng.normal(size=s[:-1] + (4,)).astype(np.float32) for s in SHAPES]
    w = rng.normal(size=(5, 4)).astype(np.float32)
    for shape, (ours, ref) in zip(SHAPES, _both(xs, w, gs)):
        assert ours[0].shape == shape[:-1] + (4,) and ours[1].shape == shape and ours[2].shape == (5, 4)
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=str(shape))


def test_linear_bias_and_compute_dtype():
    lin = Linear(5, 4, bias=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    lin.bias[...] = jnp.arange(4.0)
    x = np.random.default_rng(1).normal(size=(2, 3, 5)).astype(np.float32)
    y = lin(x)
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 3, 4)
    k = np.asarray(lin.kernel[...].astype(jnp.bfloat16), np.float32)
    ref = np.asarray(jnp.asarray(x).astype(jnp.bfloat16), np.float32) @ k + np.arange(4.0)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=2e-2, atol=2e-2)
