"""DDPM / DDIM samplers and classifier-free guidance with exact (analytic) denoisers.

The 2-D Gaussian mixture's optimal denoiser is closed form: with x_t = √ᾱ x0 + √(1-ᾱ) ε and component k ~ N(μ_k, Σ_k),
p(x_t | k) = N(√ᾱ μ_k, ᾱ Σ_k + (1-ᾱ) I) gives the responsibilities r_k(x_t), and
E[x0 | x_t] = Σ_k r_k (μ_k + √ᾱ Σ_k S_k^{-1} (x_t - √ᾱ μ_k)), S_k = ᾱ Σ_k + (1-ᾱ) I.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.diffusion import (alpha_bar, cfg_combine, cfg_dropout, classifier_free_guidance, ddim_sample, ddpm_sample,
                             make_schedule, sample, sampling_timesteps, target_from)

MUS = np.array([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]], np.float32)
COVS = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.25, 0.0], [0.0, 0.25]]], np.float32)
W = np.array([0.5, 0.3, 0.2], np.float32)
NULL = -1  # the null condition: the whole mixture
COSINE = make_schedule("cosine", 1000)


def gmm_x0(x, t, sched, cond=None):
    """E[x0 | x_t]; cond [B] in {0, 1, 2} restricts to one component, NULL keeps the mixture."""
    a = alpha_bar(sched, t)[:, None, None, None]
    S = a * COVS[None] + (1 - a) * jnp.eye(2)  # [B, K, 2, 2]; closed-form 2x2 inverse (cheap to compile)
    det = S[..., 0, 0] * S[..., 1, 1] - S[..., 0, 1] * S[..., 1, 0]
    Si = jnp.stack([jnp.stack([S[..., 1, 1], -S[..., 0, 1]], -1), jnp.stack([-S[..., 1, 0], S[..., 0, 0]], -1)], -2)
    Si = Si / det[..., None, None]
    sa = jnp.sqrt(a[..., 0])
    d = x[:, None, :] - sa * MUS[None]
    logp = jnp.log(W) - 0.5 * jnp.einsum("bki,bkij,bkj->bk", d, Si, d) - 0.5 * jnp.log(det)
    if cond is not None:
        keep = (cond[:, None] == NULL) | (jnp.arange(3)[None] == cond[:, None])
        logp = jnp.where(keep, logp, -jnp.inf)
    r = jax.nn.softmax(logp, axis=1)
    return jnp.sum(r[..., None] * (MUS[None] + sa * jnp.einsum("kij,bkjl,bkl->bki", COVS, Si, d)), axis=1)


def exact_model(x0_fn, sched, parametrization):
    """A model f(x_t, t, cond) that outputs the exact x0 in the requested parametrization."""
    def f(x, t, cond):
        x0 = x0_fn(x, t, cond)
        a = alpha_bar(sched, t).reshape((-1,) + (1,) * (x.ndim - 1))
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        return target_from(sched, x0, eps, t, parametrization)
    return f


def gmm_model(sched, parametrization="eps"):
    return exact_model(lambda x, t, c: gmm_x0(x, t, sched, c), sched, parametrization)


def mixture_moments():
    mean = W @ MUS
    second = np.einsum("k,kij->ij", W, COVS + np.einsum("ki,kj->kij", MUS, MUS))
    return mean, second - np.outer(mean, mean)


# ---------------------------------------------------------------- point mass, determinism, path splitting

POINT = jnp.asarray(np.linspace(-1.5, 1.5, 2 * 3 * 2 * 2).reshape(2, 3, 2, 2), jnp.float32)  # "images" [B,H,W,C]


def test_ddim_returns_point_mass():
    """The exact model of a point mass brings DDIM (any η, any parametrization) to that point; η = 0 ignores the rng."""
    cases = [("eps", False, "leading"), ("x0", False, "linspace"), ("v", True, "trailing")]
    scheds = {z: make_schedule("linear", 1000, zero_terminal_snr=z) for z in (False, True)}

    @jax.jit
    def run(x, r1, r2):
        outs = []
        for p, z, sp in cases:
            m = exact_model(lambda x, t, c: jnp.broadcast_to(POINT, x.shape), scheds[z], p)
            go = lambda r, eta: ddim_sample(m, scheds[z], x, r, steps=25, spacing=sp, eta=eta, parametrization=p)
            outs.append((go(r1, 0.0), go(r2, 0.0), go(r2, 0.5)))
        return outs

    x = jax.random.normal(jax.random.PRNGKey(0), POINT.shape)
    for (p, _, _), (a, b, c) in zip(cases, run(x, jax.random.PRNGKey(1), jax.random.PRNGKey(2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=p)
        np.testing.assert_allclose(np.asarray(a), np.asarray(POINT), atol=1e-4, err_msg=p)
        np.testing.assert_allclose(np.asarray(c), np.asarray(POINT), atol=1e-4, err_msg=p)


def test_split_path_continues_exactly():
    """Two calls over path[:k+1] and path[k:] equal one call (deterministic DDIM): how a condition is switched."""
    model = gmm_model(COSINE, "v")
    path = sampling_timesteps(1000, 20, "trailing")
    go = lambda x, p, **kw: sample(model, COSINE, x, jax.random.PRNGKey(0), timesteps=p, parametrization="v", **kw)

    @jax.jit
    def run(x):
        return go(x, path, return_trajectory=True), go(go(x, path[:8]), path[7:])

    (whole, traj), half = run(jax.random.normal(jax.random.PRNGKey(5), (64, 2)))
    np.testing.assert_allclose(np.asarray(half), np.asarray(whole), atol=1e-5)
    assert traj["x"].shape == (20, 64, 2) and traj["x0"].shape == (20, 64, 2)
    np.testing.assert_array_equal(np.asarray(traj["x"][-1]), np.asarray(whole))


def test_parametrizations_sample_identically_and_ddim_eta1_is_ddpm():
    sched = make_schedule("cosine", 100)

    @jax.jit
    def run(x, r):
        outs = [ddim_sample(gmm_model(sched, p), sched, x, r, steps=10, parametrization=p) for p in ("eps", "x0", "v")]
        m = gmm_model(sched, "x0")
        return (outs, ddim_sample(m, sched, x, r, eta=1.0, parametrization="x0"),
                ddpm_sample(m, sched, x, r, variance="small", parametrization="x0"))

    outs, a, b = run(jax.random.normal(jax.random.PRNGKey(7), (128, 2)), jax.random.PRNGKey(8))
    for o in outs[1:]:
        np.testing.assert_allclose(np.asarray(o), np.asarray(outs[0]), atol=2e-4)
    # DDIM with η = 1 on the full chain is DDPM ancestral sampling with the posterior ("small") variance
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


# ---------------------------------------------------------------- moments of the mixture

N = 4000
SAMPLERS = {
    "ddim_eta0_leading": partial(ddim_sample, steps=50, spacing="leading", eta=0.0),
    "ddpm_small_trailing": partial(ddpm_sample, steps=50, spacing="trailing", variance="small"),
    "ddpm_large_leading": partial(ddpm_sample, steps=50, spacing="leading", variance="large"),
}
_DRAWS: dict = {}


def _draws(name):
    """N draws of every sampler, from one compiled program (shared by the tests below)."""
    if not _DRAWS:
        x = jax.random.normal(jax.random.PRNGKey(11), (N, 2))
        run = jax.jit(lambda x, r: {k: f(gmm_model(COSINE, "eps"), COSINE, x, r) for k, f in SAMPLERS.items()})
        _DRAWS.update({k: np.asarray(v, np.float64) for k, v in run(x, jax.random.PRNGKey(12)).items()})
    return _DRAWS[name]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gmm_moments(name):
    """Sample mean / covariance of N draws vs the mixture's. Tolerance = 4 standard errors at N (mean: √(Σ_ii/N);
    covariance entry: sd((x_i - m_i)(x_j - m_j))/√N, from the draws) + a discretisation allowance for 50 steps
    (0.02 on means, 0.12 on covariances; measured with 1e5 draws the bias is <= 0.013 and <= 0.094 (var 3.3))."""
    mean, cov = mixture_moments()
    out = _draws(name)
    assert np.isfinite(out).all()
    m = out.mean(0)
    np.testing.assert_array_less(np.abs(m - mean), 4 * np.sqrt(np.diag(cov) / N) + 0.02, err_msg=f"{name} mean")
    dev = out - m
    prods = dev[:, :, None] * dev[:, None, :]
    se = prods.reshape(N, 4).std(0).reshape(2, 2) / np.sqrt(N)
    np.testing.assert_array_less(np.abs(np.cov(out.T) - cov), 4 * se + 0.12, err_msg=f"{name} covariance")


def test_gmm_moments_fail_for_a_wrong_sampler():
    """The tolerance above can fail: the same draws shrunk by 10% (a sampler with too little noise) are caught."""
    mean, cov = mixture_moments()
    out = 0.9 * _draws("ddpm_small_trailing")
    dev = out - out.mean(0)
    se = (dev[:, :, None] * dev[:, None, :]).reshape(N, 4).std(0).reshape(2, 2) / np.sqrt(N)
    assert (np.abs(np.cov(out.T) - cov) > 4 * se + 0.12).any()


# ---------------------------------------------------------------- classifier-free guidance

def test_cfg_w0_is_unconditional_w1_conditional_one_batched_call():
    sched = make_schedule("cosine", 200)
    base = gmm_model(sched, "v")
    seen = []

    def model(x, t, cond):
        seen.append(x.shape[0])
        return base(x, t, cond)

    b = 300
    cond = jnp.asarray(np.arange(b) % 3)
    null = jnp.asarray(NULL)
    x = jax.random.normal(jax.random.PRNGKey(3), (b, 2))
    kw = dict(steps=20, eta=1.0, parametrization="v")

    @jax.jit
    def run(x, r):
        guided = [ddim_sample(classifier_free_guidance(model, w, null), sched, x, r, cond=cond, **kw) for w in (0., 1.)]
        assert seen == [2 * b, 2 * b]  # both halves in one call
        plain = [ddim_sample(base, sched, x, r, cond=c, **kw) for c in (jnp.full((b,), NULL), cond)]
        return guided + plain

    g0, g1, unc, con = run(x, jax.random.PRNGKey(4))
    np.testing.assert_allclose(np.asarray(g0), np.asarray(unc), atol=1e-5)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(con), atol=1e-4)
    for k in range(3):  # the conditional sampler draws component k: mean within 4 SE (+ 0.05) of μ_k
        sel = np.asarray(con)[np.asarray(cond) == k]
        tol = 4 * np.sqrt(np.diag(COVS[k]) / len(sel)) + 0.05
        np.testing.assert_array_less(np.abs(sel.mean(0) - MUS[k]), tol)


def test_cfg_combine_and_rescale():
    rng = np.random.default_rng(0)
    c = jnp.asarray(rng.normal(size=(4, 3, 5)) * 2.0, jnp.float32)
    u = jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32)
    g, full, half = jax.jit(lambda c, u: [cfg_combine(c, u, 4.0, rescale=phi) for phi in (0.0, 1.0, 0.5)])(c, u)
    c, u = np.asarray(c), np.asarray(u)
    np.testing.assert_allclose(np.asarray(g), u + 4.0 * (c - u), rtol=1e-5, atol=1e-6)
    # φ = 1: per-example std equals the conditional output's
    np.testing.assert_allclose(np.asarray(full).std(axis=(1, 2)), c.std(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(half), 0.5 * np.asarray(full) + 0.5 * np.asarray(g), rtol=1e-5, atol=1e-6)


def test_cfg_dropout():
    cond = {"tok": jnp.ones((1000, 3)), "id": jnp.arange(1000)}
    null = {"tok": jnp.zeros((3,)), "id": jnp.asarray(-1)}
    same, drop = jax.jit(lambda c, r: [cfg_dropout(c, null, r, p) for p in (0.0, 0.3)])(cond, jax.random.PRNGKey(0))
    assert (np.asarray(same["id"]) == np.arange(1000)).all()
    dropped = np.asarray(drop["id"]) == -1
    assert (np.asarray(drop["tok"])[dropped] == 0).all() and (np.asarray(drop["tok"])[~dropped] == 1).all()
    assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 1000)
