"""Classifier-free guidance (Ho & Salimans 2022) with the CFG rescale of Lin et al. 2024 (Algorithm 2).

guided = uncond + w (cond - uncond): w = 0 is the unconditional model, w = 1 the conditional one.
Rescale φ: x_rescaled = guided · std(cond) / std(guided) (std per example over all non-batch axes), output
φ x_rescaled + (1 - φ) guided. It is applied in the model's own output space (ε, x0 or v), as diffusers does.
Conditions are pytrees whose leaves have a leading batch axis; a null condition broadcasts to them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _std(x):
    axes = tuple(range(1, x.ndim))
    return jnp.std(x, axis=axes, keepdims=True)


def cfg_combine(cond_out, uncond_out, scale, rescale=0.0):
    """uncond + scale (cond - uncond), optionally rescaled towards the conditional output's std (φ = rescale)."""
    c = cond_out.astype(jnp.float32)
    u = uncond_out.astype(jnp.float32)
    g = u + scale * (c - u)
    if not (isinstance(rescale, (int, float)) and rescale == 0):
        sg = _std(g)
        r = g * jnp.where(sg > 0, _std(c) / jnp.where(sg > 0, sg, 1.0), 1.0)
        g = rescale * r + (1.0 - rescale) * g
    return g.astype(cond_out.dtype)


def _broadcast_null(cond, null_cond):
    return jax.tree.map(lambda c, n: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), cond, null_cond)


def classifier_free_guidance(model_fn, scale, null_cond, *, rescale=0.0):
    """Wrap `model_fn(x_t, t, cond)` into a guided model of the same signature.

    Both halves go through ONE batched call: x and t are stacked [2B, ...] with (cond, null_cond)."""
    def guided(x, t, cond):
        b = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
        both = jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), cond, _broadcast_null(cond, null_cond))
        out = model_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), both)
        return cfg_combine(out[:b], out[b:], scale, rescale)
    return guided


def cfg_dropout(cond, null_cond, rng, p: float):
    """Training-time condition dropout: each example's condition becomes the null one with probability p."""
    leaves = jax.tree.leaves(cond)
    b = leaves[0].shape[0]
    drop = jax.random.bernoulli(rng, p, (b,))
    return jax.tree.map(lambda c, n: jnp.where(drop.reshape((b,) + (1,) * (c.ndim - 1)), n, c),
                        cond, _broadcast_null(cond, null_cond))
