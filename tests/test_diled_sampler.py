"""DiLED's latent samplers against a numpy transcription of the original EDDPM `DDPM.sample` (Algorithm 2) and
`DDPM.sample_one` (score_flag 2: DDIM η = 0 over every step; score_flag 7: DDIM with fewer steps), at 1e-5.

The same ε-model (a fixed nonlinear toy, in float64 numpy and in jax) and, for DDPM, the same Gaussian draws
(taken from the keys jaxlm.diffusion.sample splits) go into both."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.diffusion import sample
from jaxlm.models.diled import api
from jaxlm.models.diled.objective import DiLEDLossConfig, eddpm_schedule

T, B, D = 16, 5, 6


def np_ddpm_schedules(T):
    beta_t = np.full(T + 1, 0.008)          # the original's beta_t*0 + 0.008
    alpha_t = 1 - beta_t
    alphabar_t = np.exp(np.cumsum(np.log(alpha_t)))
    mab = 1 - alphabar_t
    return {"beta_t": beta_t, "sqrta": np.sqrt(alpha_t), "oneover_sqrta": 1 / np.sqrt(alpha_t),
            "sqrt_beta_t": np.sqrt(beta_t), "sqrtab": np.sqrt(alphabar_t), "mab": mab, "sqrtmab": np.sqrt(mab),
            "mab_over_sqrtmab": (1 - alpha_t) / np.sqrt(mab)}


_r = np.random.default_rng(0)
_W, _b = _r.normal(size=(D, D)) * 0.4, _r.normal(size=D)


def np_eps(x, ts):                          # ts = i / n_T, as the original passes it
    return np.tanh(x @ _W + ts[:, None] * _b)


def jx_eps(x, t, cond=None):
    return jnp.tanh(x @ jnp.asarray(_W, jnp.float32) + (t.astype(jnp.float32) / T)[:, None] * jnp.asarray(_b, jnp.float32))


def np_sample(S, x_i, zs):
    """DDPM.sample: for i = n_T .. 1, z = 0 at i = 1."""
    for k, i in enumerate(range(T, 0, -1)):
        z = zs[k] if i > 1 else 0
        eps = np_eps(x_i, np.full(B, i / T))
        x_i = S["oneover_sqrta"][i] * (x_i - eps * S["mab_over_sqrtmab"][i]) + S["sqrt_beta_t"][i] * z
    return x_i


def np_sample_one_ddim(S, x_i):
    """sample_one(score_flag=2), eta = 0."""
    for i in range(T, 0, -1):
        eps = np_eps(x_i, np.full(B, i / T))
        sigma_ = 0.0 * S["sqrtmab"][i - 1] / S["sqrtmab"][i] * S["sqrt_beta_t"][i]
        x_i = S["oneover_sqrta"][i] * (x_i - (S["sqrtmab"][i] - S["sqrta"][i] * np.sqrt(S["mab"][i - 1] - sigma_ ** 2))
                                       * eps)
    return x_i


def np_sample_one_ddim_steps(S, x_i, step):
    """sample_one(score_flag=7, T=n_T, step=step): DDIM along range(T, 0, -T//step), stopping at T//step."""
    step_list = list(range(T, 0, -T // step))
    for cnt, i in enumerate(step_list[:-1]):
        eps = np_eps(x_i, np.full(B, i / T))
        nxt = step_list[cnt + 1]
        x_i = S["sqrtab"][nxt] * (x_i - S["sqrtmab"][i] * eps) / S["sqrtab"][i] + S["sqrtmab"][nxt] * eps
    return x_i, step_list


@partial(jax.jit, static_argnums=(2, 3, 4))
def _run(x, rng, path, method, variance):
    sched = eddpm_schedule(DiLEDLossConfig(num_steps=T))
    return sample(jx_eps, sched, x, rng, timesteps=jnp.asarray(path), method=method, variance=variance, eta=0.0,
                  final_noise=False)


@pytest.fixture(scope="module")
def setup():
    sched = eddpm_schedule(DiLEDLossConfig(num_steps=T))
    x_T = np.random.default_rng(1).normal(size=(B, D))
    return sched, np_ddpm_schedules(T), x_T


def test_ddpm_sampler_matches_the_originals_algorithm_2(setup):
    _, S, x_T = setup
    path = api.sampling_path(T, "ddpm", None)
    rng = jax.random.key(3)
    path = tuple(int(t) for t in path)
    ours = _run(jnp.asarray(x_T, jnp.float32), rng, path, "ddpm", "large")
    keys = jax.random.split(rng, T)           # the draws sample() takes, one per step
    zs = np.asarray(jax.vmap(lambda k: jax.random.normal(k, (B, D), jnp.float32))(keys), np.float64)
    ref = np_sample(S, x_T, zs)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)
    assert np.abs(ref - np_sample(S, x_T, 0 * zs)).max() > 1e-2   # the draws matter: the comparison can fail


def test_ddim_matches_the_originals_sample_one_full_and_fewer_steps(setup):
    _, S, x_T = setup
    x = jnp.asarray(x_T, jnp.float32)
    full = _run(x, jax.random.key(0), tuple(int(t) for t in api.sampling_path(T, "ddim", None)), "ddim", "small")
    np.testing.assert_allclose(np.asarray(full), np_sample_one_ddim(S, x_T), rtol=1e-5, atol=1e-5)
    ref, step_list = np_sample_one_ddim_steps(S, x_T, step=4)
    few = _run(x, jax.random.key(0), tuple(step_list), "ddim", "small")
    np.testing.assert_allclose(np.asarray(few), ref, rtol=1e-5, atol=1e-5)
    # api's DDIM path goes one step further, to level 0 (the original stops at T // step)
    np.testing.assert_array_equal(api.sampling_path(T, "ddim", 4), list(range(T, -1, -T // 4)))
    assert np.abs(ref - np_sample_one_ddim(S, x_T)).max() > 1e-4
