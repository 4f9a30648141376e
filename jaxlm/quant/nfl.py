"""Learned NormalFloat (NFL): calibrate per-group scales to minimise a layer's output error.

FLUTE's NFL keeps the NF table and the [K/G, N] scale tensor and learns the scales with a straight-through
estimator (STE): the codes are re-derived from the current scales in every step, but the gradient only flows
through `table[codes] * scale` (the rounding is not differentiated). The inference format does not change.

Here the objective is the layer-output error on calibration activations X [n, K] (the inputs this linear layer
sees on calibration tokens):

    E(s) = || X @ (W_hat(s) - W) ||^2 / n,        W_hat(s) = table[nearest(W / s)] * s

parametrised as s = s0 * exp(theta) (s0 = absmax scales, theta = 0 at the start, so step 0 is plain NF), and
minimised with Adam. The best scales seen (lowest E, step 0 included) are returned, so NFL never ends worse than
plain NF on the calibration data. When n > K the Gram matrix H = X^T X is used instead of X (same value, cheaper).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jaxlm.quant.formats import QuantFormat, absmax_scales, expand_scales, pivots


def _fake_quant(w, s, table, group_size):
    """STE fake quantization: forward = table[nearest(w/s)] * s; gradient w.r.t. s = table[code]."""
    se = expand_scales(s, group_size)
    u = jax.lax.stop_gradient(w / se)
    codes = jnp.sum(u[..., None] > pivots(table), axis=-1)
    return jnp.take(jnp.asarray(table, jnp.float32), codes, axis=0) * se


def output_error(w, s, x_or_h, table, group_size, gram: bool, n: int):
    d = _fake_quant(w, s, table, group_size) - w
    if gram:
        return jnp.sum(d * (x_or_h @ d)) / n
    return jnp.sum(jnp.square(x_or_h @ d)) / n


@functools.partial(jax.jit, static_argnames=("group_size", "steps", "gram", "n"))
def _calibrate(w, s0, x_or_h, table, lr, *, group_size: int, steps: int, gram: bool, n: int):
    opt = optax.adam(lr)

    def loss_fn(theta):
        return output_error(w, s0 * jnp.exp(theta), x_or_h, table, group_size, gram, n)

    theta = jnp.zeros_like(s0)
    state = opt.init(theta)
    vg = jax.value_and_grad(loss_fn)

    def step(carry, _):
        theta, state, best_theta, best = carry
        loss, g = vg(theta)
        better = loss < best
        best_theta = jnp.where(better, theta, best_theta)
        best = jnp.where(better, loss, best)
        upd, state = opt.update(g, state, theta)
        return (optax.apply_updates(theta, upd), state, best_theta, best), loss

    init = (theta, state, theta, jnp.asarray(jnp.inf, jnp.float32))
    (theta, _, best_theta, best), losses = jax.lax.scan(step, init, None, length=steps)
    last = loss_fn(theta)  # the final iterate has not been scored yet
    best_theta = jnp.where(last < best, theta, best_theta)
    best = jnp.minimum(last, best)
    return s0 * jnp.exp(best_theta), losses, best


def calibrate_scales(w, x, fmt: QuantFormat, *, steps: int = 50, lr: float = 5e-3, scales0=None,
                     return_history: bool = False):
    """Learn per-group scales for one weight.

    w [K, N] (K a multiple of the group size), x [..., K] calibration inputs of this layer.
    Returns scales [K/G, N] float32 (and the per-step losses, step 0 = plain NF, when return_history).
    """
    w = jnp.asarray(w, jnp.float32)
    x = jnp.asarray(x, jnp.float32).reshape(-1, w.shape[0])
    s0 = absmax_scales(w, fmt.group_size) if scales0 is None else jnp.asarray(scales0, jnp.float32)
    n, k = x.shape
    gram = n > k
    xh = (x.T @ x) if gram else x
    s, losses, best = _calibrate(w, s0, xh, jnp.asarray(fmt.table_array), jnp.asarray(lr, jnp.float32),
                                 group_size=fmt.group_size, steps=int(steps), gram=gram, n=int(n))
    return (s, losses, best) if return_history else s


def layer_output_error(w, scales, x, fmt: QuantFormat) -> float:
    """|| x @ (W_hat - W) ||^2 / n for the given scales (codes re-derived from them)."""
    w = jnp.asarray(w, jnp.float32)
    x = jnp.asarray(x, jnp.float32).reshape(-1, w.shape[0])
    return float(output_error(w, jnp.asarray(scales, jnp.float32), x, jnp.asarray(fmt.table_array),
                              fmt.group_size, False, x.shape[0]))
