"""DDPM ancestral sampling and DDIM as one `lax.scan` over a decreasing timestep path.

A model is `model_fn(x_t, t, cond) -> prediction` (t: int32 [B]) in the parametrization "eps", "x0" or "v".
A path [t_0 > t_1 > ... > -1] (see `sampling_timesteps`) is walked pairwise t -> s with ᾱ_{-1} = 1:

DDPM (Ho et al. 2020; respaced paths as Nichol & Dhariwal 2021, β_{t,s} = 1 - ᾱ_t/ᾱ_s):
    x_s = √ᾱ_s β_{t,s}/(1-ᾱ_t) x̂_0 + √(ᾱ_t/ᾱ_s) (1-ᾱ_s)/(1-ᾱ_t) x_t + σ z,
    σ² = β_{t,s} (1-ᾱ_s)/(1-ᾱ_t) ("small", the posterior variance) or β_{t,s} ("large")
DDIM (Song et al. 2021 eq. 12, 16):
    x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s-σ²) ε̂ + σ z,   σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_s)
No noise is added on a step into s = -1. With clip_x0 = c, x̂_0 is clipped to [-c, c] and ε̂ recomputed from it.
Splitting a path (path[:k+1], then path[k:]) continues exactly where the first call stopped, e.g. to switch
the condition at step k; start from `q_sample(x0, path[0], noise)` to sample from an intermediate noise level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.diffusion.param import alpha_bar, check_parametrization, x0_and_eps
from jaxlm.diffusion.schedules import Schedule, sampling_timesteps
from jaxlm.errors import ConfigError

METHODS = ("ddpm", "ddim")
VARIANCES = ("small", "large")


def _check_path(timesteps, T: int):
    try:
        path = np.asarray(timesteps)
    except Exception:  # a tracer: checked by the caller's construction
        return jnp.asarray(timesteps, jnp.int32)
    if path.ndim != 1 or path.shape[0] < 2:
        raise ConfigError(f"timesteps: expected a 1-D path of at least 2 entries (t_0 ... -1), got shape {path.shape}")
    if not np.all(np.diff(path) < 0) or path[0] >= T or path[-1] < -1:
        raise ConfigError(f"timesteps: must strictly decrease within [-1, T-1={T - 1}], got {path.tolist()}")
    return jnp.asarray(path, jnp.int32)


def sample(model_fn, schedule: Schedule, x, rng, *, timesteps, cond=None, parametrization: str = "eps",
           method: str = "ddim", eta=0.0, variance: str = "small", clip_x0: float | None = None,
           final_noise: bool = True, return_trajectory: bool = False):
    """Walk `timesteps` from x (at level timesteps[0]); returns x at timesteps[-1] (and, if asked, a trajectory
    dict {"x": [S, B, ...] states after each step, "x0": [S, B, ...] predictions}). final_noise=False drops the
    noise of the last step even when it does not end at -1 (EDDPM's sampler stops at t = 0 without noise)."""
    check_parametrization(parametrization)
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: unknown sampler; expected one of {list(METHODS)}")
    if variance not in VARIANCES:
        raise ConfigError(f"variance={variance!r}: expected one of {list(VARIANCES)}")
    if isinstance(eta, (int, float)) and not 0.0 <= eta <= 1.0:
        raise ConfigError(f"eta={eta!r}: DDIM's eta must lie in [0, 1]")
    path = _check_path(timesteps, schedule.num_steps)
    n = path.shape[0] - 1
    b = x.shape[0]
    noise_on = (path[1:] >= 0) & ((jnp.arange(n) < n - 1) | final_noise)
    keys = jax.random.split(rng, n)

    def step(xc, inp):
        t, s, on, key = inp
        tb = jnp.full((b,), t, jnp.int32)
        pred = model_fn(xc.astype(x.dtype), tb, cond)
        x0, eps = x0_and_eps(pred, xc, tb, schedule, parametrization)
        a_t, a_s = alpha_bar(schedule, t), alpha_bar(schedule, s)
        if clip_x0 is not None:
            x0 = jnp.clip(x0, -clip_x0, clip_x0)
            eps = (xc - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
        if method == "ddpm":
            alpha_ts = a_t / a_s
            beta_ts = 1.0 - alpha_ts
            mean = (jnp.sqrt(a_s) * beta_ts / (1.0 - a_t)) * x0 + (jnp.sqrt(alpha_ts) * (1.0 - a_s) / (1.0 - a_t)) * xc
            var = beta_ts * (1.0 - a_s) / (1.0 - a_t) if variance == "small" else beta_ts
            std = jnp.sqrt(var)
        else:
            std = eta * jnp.sqrt((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s))
            mean = jnp.sqrt(a_s) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_s - std * std, 0.0)) * eps
        z = jax.random.normal(key, xc.shape, jnp.float32)
        xn = mean + jnp.where(on, std, 0.0) * z
        return xn, ({"x": xn.astype(x.dtype), "x0": x0.astype(x.dtype)} if return_trajectory else None)

    out, traj = jax.lax.scan(step, x.astype(jnp.float32), (path[:-1], path[1:], noise_on, keys))
    out = out.astype(x.dtype)
    return (out, traj) if return_trajectory else out


def ddim_sample(model_fn, schedule: Schedule, x, rng, *, steps: int | None = None, spacing: str = "leading",
                timesteps=None, eta=0.0, **kw):
    """DDIM with `steps` sampling steps (default T) and η in [0, 1] (0: deterministic; 1: DDPM-like noise)."""
    if timesteps is None:
        timesteps = sampling_timesteps(schedule.num_steps, schedule.num_steps if steps is None else steps, spacing)
    return sample(model_fn, schedule, x, rng, timesteps=timesteps, method="ddim", eta=eta, **kw)


def ddpm_sample(model_fn, schedule: Schedule, x, rng, *, steps: int | None = None, spacing: str = "leading",
                timesteps=None, variance: str = "small", **kw):
    """Ancestral sampling over all T steps (default) or a respaced path; variance "small" (posterior) or "large" (β)."""
    if timesteps is None:
        timesteps = sampling_timesteps(schedule.num_steps, schedule.num_steps if steps is None else steps, spacing)
    return sample(model_fn, schedule, x, rng, timesteps=timesteps, method="ddpm", variance=variance, **kw)
