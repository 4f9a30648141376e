"""The denoising training loss (Ho et al. 2020's L_simple, in any parametrization), per example."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.diffusion.param import check_parametrization, q_sample, target_from
from jaxlm.diffusion.schedules import Schedule
from jaxlm.errors import ConfigError

LOSSES = ("mse", "l1")
T_SAMPLINGS = ("uniform", "stratified")


def sample_t(rng, batch: int, num_steps: int, t_sampling: str = "uniform"):
    """Training timesteps [B] in {0..T-1}: i.i.d. uniform, or stratified (t_i = ⌊((u + i/B) mod 1) T⌋, one u)."""
    if t_sampling == "uniform":
        return jax.random.randint(rng, (batch,), 0, num_steps, jnp.int32)
    if t_sampling == "stratified":
        u = jax.random.uniform(rng, ())
        frac = jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
        return jnp.minimum(jnp.floor(frac * num_steps).astype(jnp.int32), num_steps - 1)
    raise ConfigError(f"t_sampling={t_sampling!r}: expected one of {list(T_SAMPLINGS)}")


def diffusion_loss(model_fn, x0, rng, schedule: Schedule, parametrization: str = "eps", loss: str = "mse",
                   t_sampling: str = "uniform", *, cond=None, t=None, noise=None, return_aux: bool = False):
    """Per-example loss [B]: mean over non-batch axes of |f(x_t, t, cond) - target|^p (p = 2 for mse, 1 for l1).

    t ~ t_sampling unless given, noise ~ N(0, I) unless given; the target is ε, x_0 or v = √ᾱ ε - √(1-ᾱ) x_0.
    With return_aux, also returns {"t", "noise", "x_t", "pred", "target"} (e.g. for a t-dependent extra term)."""
    check_parametrization(parametrization)
    if loss not in LOSSES:
        raise ConfigError(f"loss={loss!r}: expected one of {list(LOSSES)}")
    k_t, k_n = jax.random.split(rng)
    b = x0.shape[0]
    if t is None:
        t = sample_t(k_t, b, schedule.num_steps, t_sampling)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
    if noise is None:
        noise = jax.random.normal(k_n, x0.shape, jnp.float32).astype(x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    pred = model_fn(x_t, t, cond)
    target = target_from(schedule, x0.astype(jnp.float32), noise.astype(jnp.float32), t, parametrization)
    diff = pred.astype(jnp.float32) - target
    err = diff * diff if loss == "mse" else jnp.abs(diff)
    per_ex = jnp.mean(err.reshape(b, -1), axis=1)
    if return_aux:
        return per_ex, {"t": t, "noise": noise, "x_t": x_t, "pred": pred, "target": target}
    return per_ex
