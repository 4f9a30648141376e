"""Schedules, parametrizations, forward noising and posteriors vs direct numpy formulas; bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.diffusion import (Schedule, convert, ddim_sample, diffusion_loss, make_betas, make_schedule, q_posterior,
                             q_sample, rescale_zero_terminal_snr, sample, sampling_timesteps, target_from,
                             x0_and_eps)
from jaxlm.errors import ConfigError


def test_linear_betas_match_ddpm():
    b = make_betas("linear", 1000)
    np.testing.assert_allclose(b, np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
    b100 = make_betas("linear", 100)  # Nichol & Dhariwal's 1000/T scaling
    np.testing.assert_allclose(b100[[0, -1]], [1e-3, 0.2], rtol=1e-12)
    np.testing.assert_allclose(np.diff(b100), (0.2 - 1e-3) / 99, rtol=1e-9)


def test_cosine_alphas_cumprod_formula():
    T, s = 1000, 0.008
    f = lambda u: np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    sch = make_schedule("cosine", T)
    t = np.arange(T)
    expected = f((t + 1) / T) / f(0.0)
    b = make_betas("cosine", T)
    unclipped = b < 0.999  # the 0.999 clip only bites at the very end
    assert unclipped[:990].all() and b.max() == pytest.approx(0.999)
    np.testing.assert_allclose(np.asarray(sch.alphas_cumprod)[unclipped], expected[unclipped], rtol=2e-5, atol=1e-9)


def test_constant_and_scaled_linear():
    sch = make_schedule("constant", 50, beta=0.008)
    np.testing.assert_allclose(np.asarray(sch.alphas_cumprod), 0.992 ** np.arange(1, 51), rtol=1e-6)
    b = make_betas("scaled_linear", 1000)
    np.testing.assert_allclose(np.sqrt(b), np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000), rtol=1e-12)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_zero_terminal_snr(name):
    b0 = make_betas(name, 1000)
    b1 = rescale_zero_terminal_snr(b0)
    ab0, ab1 = np.cumprod(1 - b0), np.cumprod(1 - b1)
    assert ab1[-1] == 0.0 and b1[-1] == pytest.approx(1.0)
    assert ab1[0] == pytest.approx(ab0[0], rel=1e-12)  # first SNR preserved
    # √ᾱ is an affine map of the original: shift by the terminal value, scale to keep the first
    ratio = np.sqrt(ab1[:-1]) / (np.sqrt(ab0[:-1]) - np.sqrt(ab0[-1]))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    sch = make_schedule(name, 1000, zero_terminal_snr=True)
    assert float(sch.alphas_cumprod[-1]) == 0.0 and np.isfinite(np.asarray(sch.posterior_log_variance_clipped)).all()


def test_schedule_derived_and_posterior_vs_numpy():
    sch = make_schedule("linear", 200)
    b = make_betas("linear", 200)
    a = 1 - b
    ab = np.cumprod(a)
    abp = np.concatenate([[1.0], ab[:-1]])
    np.testing.assert_allclose(np.asarray(sch.posterior_variance), b * (1 - abp) / (1 - ab), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sch.posterior_log_variance_clipped)[1:], np.log((b * (1 - abp) / (1 - ab))[1:]),
                               rtol=1e-5)
    assert float(sch.posterior_log_variance_clipped[0]) == pytest.approx(float(sch.posterior_log_variance_clipped[1]))
    # one step: Bayes on q(x_{t-1}|x_0) N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}) and q(x_t|x_{t-1}) N(√α_t x_{t-1}, β_t)
    rng = np.random.default_rng(0)
    x0, xt = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    t = np.array([1, 7, 50, 120, 199])
    prec = 1 / (1 - abp[t]) + a[t] / b[t]
    var = 1 / prec
    mean = var[:, None] * (np.sqrt(abp[t])[:, None] * x0 / (1 - abp[t])[:, None] + np.sqrt(a[t])[:, None] * xt / b[t][:, None])
    m, v, lv = q_posterior(sch, jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(m), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(v)[:, 0], var, rtol=1e-4)
    np.testing.assert_allclose(np.exp(np.asarray(lv))[:, 0], var, rtol=1e-4)


def test_ddpm_step_is_posterior_sample():
    """One ancestral step t -> t-1 with an x0-model is mean + σ z of q(x_{t-1} | x_t, x̂0), with the sampler's z."""
    sch = make_schedule("cosine", 100)
    x0 = jnp.linspace(-1, 1, 12).reshape(2, 3, 2)
    xt = jnp.cos(jnp.arange(12.0)).reshape(2, 3, 2)

    @jax.jit
    def both(xt, rng):
        out = sample(lambda x, t, c: jnp.broadcast_to(x0, x.shape), sch, xt, rng, timesteps=[40, 39],
                     parametrization="x0", method="ddpm")
        m, v, _ = q_posterior(sch, x0, xt, jnp.full((2,), 40))
        z = jax.random.normal(jax.random.split(rng, 1)[0], xt.shape)
        return out, m + jnp.sqrt(v) * z

    out, want = both(xt, jax.random.PRNGKey(3))
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_eddpm_sampler_form():
    """EDDPM (guangyliu/EDDPM) samples with constant β = 0.008 over indices T..1, x_{i-1} = (x_i - ε β/√(1-ᾱ_i))/√α_i
    + √β_i z, no noise on the last step, stopping at index 0: our DDPM "large" over [T, ..., 0], final_noise=False."""
    T = 6
    sch = make_schedule("constant", T + 1, beta=0.008)
    eps_model = lambda x, t, c: jnp.sin(3.0 * x + t[:, None].astype(jnp.float32))
    x = jnp.linspace(-2, 2, 8).reshape(4, 2)
    rng = jax.random.PRNGKey(9)
    out = jax.jit(lambda x, r: sample(eps_model, sch, x, r, timesteps=np.arange(T, -1, -1), method="ddpm",
                                      variance="large", final_noise=False))(x, rng)
    keys = jax.random.split(rng, T)
    b = 0.008
    ab = (1 - b) ** np.arange(1, T + 2)
    xi = np.asarray(x, np.float64)
    for n, i in enumerate(range(T, 0, -1)):
        z = np.asarray(jax.random.normal(keys[n], x.shape)) if i > 1 else 0.0
        e = np.asarray(eps_model(jnp.asarray(xi, jnp.float32), jnp.full((4,), i), None))
        xi = (xi - e * b / np.sqrt(1 - ab[i])) / np.sqrt(1 - b) + np.sqrt(b) * z
    np.testing.assert_allclose(np.asarray(out), xi, rtol=1e-4, atol=1e-4)


@jax.jit
def _round_trips(sch, x0, eps, t):
    xt = q_sample(sch, x0, t, eps)
    tg = {p: target_from(sch, x0, eps, t, p) for p in ("eps", "x0", "v")}
    back = {src: x0_and_eps(tg[src], xt, t, sch, src) for src in tg}
    conv = {(src, dst): convert(tg[src], xt, t, sch, src, dst) for src in tg for dst in tg}
    return xt, tg, back, conv


@pytest.mark.parametrize("zero_snr", [False, True])
def test_parametrization_round_trips(zero_snr):
    sch = make_schedule("linear", 1000, zero_terminal_snr=zero_snr)
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.normal(size=(7, 4, 3)), jnp.float32)
    eps = jnp.asarray(rng.normal(size=(7, 4, 3)), jnp.float32)
    t = jnp.array([0, 5, 100, 500, 800, 900, 999 if zero_snr else 950])
    xt, tg, back, conv = _round_trips(sch, x0, eps, t)
    x0_ok = slice(0, 6)  # ε -> x0 divides by √ᾱ, 0 at SNR 0: compare x0 where ᾱ > 0
    for src in tg:
        rx0, reps = back[src]
        np.testing.assert_allclose(np.asarray(rx0)[x0_ok], np.asarray(x0)[x0_ok], atol=2e-3)
        if src != "eps":
            np.testing.assert_allclose(np.asarray(reps), np.asarray(eps), atol=2e-3)
        for dst in tg:
            if src == "eps" and dst != "eps":  # both divide by √ᾱ
                got, want = np.asarray(conv[src, dst])[x0_ok], np.asarray(tg[dst])[x0_ok]
            else:
                got, want = np.asarray(conv[src, dst]), np.asarray(tg[dst])
            np.testing.assert_allclose(got, want, atol=2e-3, err_msg=f"{src} -> {dst}")
    # v identities: x0 = √ᾱ x_t - √(1-ᾱ) v
    ab = np.asarray(sch.alphas_cumprod)[np.asarray(t)][:, None, None]
    np.testing.assert_allclose(np.sqrt(ab) * np.asarray(xt) - np.sqrt(1 - ab) * np.asarray(tg["v"]), np.asarray(x0),
                               atol=1e-5)
    if zero_snr:  # at SNR 0 x_t is pure noise, v = -x0, and v -> ε stays finite
        np.testing.assert_allclose(np.asarray(xt)[6], np.asarray(eps)[6], atol=1e-6)
        np.testing.assert_allclose(np.asarray(tg["v"])[6], -np.asarray(x0)[6], atol=1e-6)
        np.testing.assert_allclose(np.asarray(conv["v", "eps"])[6], np.asarray(eps)[6], atol=1e-5)
        np.testing.assert_allclose(np.asarray(conv["x0", "v"])[6], np.asarray(tg["v"])[6], atol=1e-5)


def test_sampling_timesteps():
    np.testing.assert_array_equal(sampling_timesteps(1000, 50, "leading")[[0, 1, -2, -1]], [980, 960, 0, -1])
    np.testing.assert_array_equal(sampling_timesteps(1000, 50, "trailing")[[0, 1, -2, -1]], [999, 979, 19, -1])
    np.testing.assert_array_equal(sampling_timesteps(1000, 10, "linspace")[[0, 1, -2, -1]], [999, 888, 0, -1])
    for sp in ("leading", "linspace", "trailing"):
        np.testing.assert_array_equal(sampling_timesteps(20, 20, sp), np.arange(19, -2, -1))
        assert len(sampling_timesteps(1000, 7, sp)) == 8


def test_schedule_is_a_pytree():
    sch = make_schedule("cosine", 10)
    leaves, tree = jax.tree.flatten(sch)
    assert len(leaves) == 13 and all(l.shape == (10,) for l in leaves)
    out = jax.jit(lambda s: s.alphas_cumprod.sum())(sch)
    assert float(out) == pytest.approx(float(np.sum(np.asarray(sch.alphas_cumprod))))
    assert isinstance(jax.tree.unflatten(tree, leaves), Schedule)


def _model(x, t, c):
    return x


@pytest.mark.parametrize("call, field", [
    (lambda: make_schedule("sigmoid", 10), "schedule"),
    (lambda: make_schedule("linear", 0), "num_steps"),
    (lambda: make_schedule("cosine", -5), "num_steps"),
    (lambda: make_betas("constant", 10, beta=1.5), "beta"),
    (lambda: make_betas("linear", 10, nope=1), "schedule"),
    (lambda: sampling_timesteps(100, 101), "steps"),
    (lambda: sampling_timesteps(100, 0), "steps"),
    (lambda: sampling_timesteps(100, 10, "quadratic"), "spacing"),
    (lambda: ddim_sample(_model, make_schedule("constant", 10), jnp.zeros((2, 3)), jax.random.PRNGKey(0), steps=11),
     "steps"),
    (lambda: ddim_sample(_model, make_schedule("constant", 10), jnp.zeros((2, 3)), jax.random.PRNGKey(0),
                         parametrization="score"), "parametrization"),
    (lambda: ddim_sample(_model, make_schedule("constant", 10), jnp.zeros((2, 3)), jax.random.PRNGKey(0), eta=1.5),
     "eta"),
    (lambda: sample(_model, make_schedule("constant", 10), jnp.zeros((2, 3)), jax.random.PRNGKey(0),
                    timesteps=[3, 5, -1]), "timesteps"),
    (lambda: sample(_model, make_schedule("constant", 10), jnp.zeros((2, 3)), jax.random.PRNGKey(0),
                    timesteps=[9, -1], method="euler"), "method"),
    (lambda: sample(_model, make_schedule("constant", 10), jnp.zeros((2, 3)), jax.random.PRNGKey(0),
                    timesteps=[9, -1], method="ddpm", variance="huge"), "variance"),
    (lambda: convert(jnp.zeros((1, 2)), jnp.zeros((1, 2)), 0, make_schedule("constant", 10), "eps", "noise"), "dst"),
    (lambda: diffusion_loss(_model, jnp.zeros((2, 3)), jax.random.PRNGKey(0), make_schedule("constant", 10), "epsilon"),
     "parametrization"),
    (lambda: diffusion_loss(_model, jnp.zeros((2, 3)), jax.random.PRNGKey(0), make_schedule("constant", 10), loss="l2"),
     "loss"),
    (lambda: diffusion_loss(_model, jnp.zeros((2, 3)), jax.random.PRNGKey(0), make_schedule("constant", 10),
                            t_sampling="beta"), "t_sampling"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ConfigError, match=field):
        call()
