"""ε / x0 / v parametrizations, forward noising q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0).

x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε                                     (Ho et al. 2020, eq. 4)
v   = √ᾱ_t ε - √(1-ᾱ_t) x_0                                     (Salimans & Ho 2022; used by Lin et al. 2024)
x_0 = (x_t - √(1-ᾱ) ε) / √ᾱ = √ᾱ x_t - √(1-ᾱ) v,   ε = (x_t - √ᾱ x_0) / √(1-ᾱ) = √(1-ᾱ) x_t + √ᾱ v

Latents have any shape [B, ...] (vectors, images, videos); t is an int array [B] (or a scalar) indexing the
schedule, with t = -1 meaning the clean level (ᾱ = 1). Per-step coefficients broadcast over the trailing axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.diffusion.schedules import Schedule
from jaxlm.errors import ConfigError

PARAMETRIZATIONS = ("eps", "x0", "v")


def check_parametrization(name: str, field: str = "parametrization") -> str:
    if name not in PARAMETRIZATIONS:
        raise ConfigError(f"{field}={name!r}: unknown parametrization; expected one of {list(PARAMETRIZATIONS)}")
    return name


def _bcast(c, x):
    """Coefficient c ([B] or scalar) reshaped to broadcast against x [B, ...]."""
    c = jnp.asarray(c, jnp.float32)
    if c.ndim == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def alpha_bar(schedule: Schedule, t):
    """ᾱ_t with ᾱ_{-1} = 1 (the clean level)."""
    t = jnp.asarray(t, jnp.int32)
    return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def _coefs(schedule: Schedule, t, x):
    ab = alpha_bar(schedule, t)
    return _bcast(jnp.sqrt(ab), x), _bcast(jnp.sqrt(1.0 - ab), x)


def q_sample(schedule: Schedule, x0, t, noise):
    """Forward noising: a sample of q(x_t | x_0) given the Gaussian `noise`."""
    a, s = _coefs(schedule, t, x0)
    return (a * x0 + s * noise).astype(x0.dtype)


def q_mean_variance(schedule: Schedule, x0, t):
    """Mean √ᾱ x_0 and variance 1 - ᾱ of q(x_t | x_0) (variance broadcastable to x0)."""
    a, s = _coefs(schedule, t, x0)
    return a * x0, s * s


def q_posterior(schedule: Schedule, x0, x_t, t):
    """q(x_{t-1} | x_t, x_0) for t >= 0: (mean, variance, log_variance_clipped), as in Ho et al. eq. 6-7."""
    t = jnp.asarray(t, jnp.int32)
    mean = _bcast(schedule.posterior_mean_coef1[t], x_t) * x0 + _bcast(schedule.posterior_mean_coef2[t], x_t) * x_t
    return mean, _bcast(schedule.posterior_variance[t], x_t), _bcast(schedule.posterior_log_variance_clipped[t], x_t)


def v_target(schedule: Schedule, x0, noise, t):
    """The v-prediction target √ᾱ ε - √(1-ᾱ) x_0."""
    a, s = _coefs(schedule, t, x0)
    return a * noise - s * x0


def x0_and_eps(pred, x_t, t, schedule: Schedule, parametrization: str):
    """(x̂_0, ε̂) from a model output in any parametrization (exact; ε → x0 divides by √ᾱ, x0 → ε by √(1-ᾱ))."""
    check_parametrization(parametrization)
    a, s = _coefs(schedule, t, x_t)
    pred = pred.astype(jnp.float32)
    x_t = x_t.astype(jnp.float32)
    if parametrization == "eps":
        return (x_t - s * pred) / a, pred
    if parametrization == "x0":
        return pred, (x_t - a * pred) / s
    return a * x_t - s * pred, s * x_t + a * pred


def convert(pred, x_t, t, schedule: Schedule, src: str, dst: str):
    """Re-express a prediction made in parametrization `src` in `dst` (given x_t and t)."""
    check_parametrization(src, "src")
    check_parametrization(dst, "dst")
    if src == dst:
        return pred
    if {src, dst} == {"eps", "v"}:  # direct: avoids dividing by √ᾱ (ᾱ = 0 at zero terminal SNR)
        a, s = _coefs(schedule, t, x_t)
        if src == "eps":
            return ((pred - s * x_t) / a).astype(pred.dtype)
        return (s * x_t + a * pred).astype(pred.dtype)
    x0, eps = x0_and_eps(pred, x_t, t, schedule, src)
    out = {"x0": x0, "eps": eps}.get(dst)
    if out is None:
        out = target_from(schedule, x0, eps, t, dst)
    return out.astype(pred.dtype)


def target_from(schedule: Schedule, x0, eps, t, parametrization: str):
    """What a model in `parametrization` should output for this (x_0, ε) pair."""
    check_parametrization(parametrization)
    if parametrization == "eps":
        return eps
    if parametrization == "x0":
        return x0
    return v_target(schedule, x0, eps, t)

