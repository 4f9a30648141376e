"""DiLED's objective against a direct numpy transcription of the original EDDPM code (`ddpm_schedules`,
`DDPM.forward_new`, `VAE_DDPM.forward`, the Optimus CE, ReLSO's weighted CE), its constants pinned."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.errors import ConfigError
from jaxlm.models.diled import objective as ob
from jaxlm.models.diled.objective import DiLEDLossConfig

T = 50


# ------------------------------------------------------------------ numpy transcription of the original


def np_ddpm_schedules(beta1, beta2, T):
    beta_t = (beta2 - beta1) * np.arange(0, T + 1, dtype=np.float64) / T + beta1
    beta_t = beta_t * 0 + 0.008
    sqrt_beta_t = np.sqrt(beta_t)
    alpha_t = 1 - beta_t
    alphabar_t = np.exp(np.cumsum(np.log(alpha_t)))
    mab = 1 - alphabar_t
    return {"beta_t": beta_t, "alpha_t": alpha_t, "oneover_sqrta": 1 / np.sqrt(alpha_t), "sqrt_beta_t": sqrt_beta_t,
            "sqrtab": np.sqrt(alphabar_t), "sqrtmab": np.sqrt(mab), "loss_weight": 0.5 * beta_t / (alpha_t * mab)}


def np_forward_new(S, x, mu, _ts, eps, eps_model, crit, exact=False):
    x_t = S["sqrtab"][_ts, None] * x + S["sqrtmab"][_ts, None] * eps
    eps_0 = eps_model(x_t, _ts / T)
    loss = crit(eps, eps_0).mean(1)
    if exact:  # the exact inversion of the forward step (not in the original)
        x0 = (x_t - S["sqrtmab"][1] * eps_0) / S["sqrtab"][1]
    else:
        x0 = S["oneover_sqrta"][1] * (x_t - S["sqrt_beta_t"][1] * eps_0)
    loss_z0 = S["alpha_t"][1] / S["beta_t"][1] * crit(mu, x0).mean(1)
    loss = np.where(_ts == 1, loss_z0, loss)
    return loss, S["loss_weight"][_ts, None]


L1 = lambda a, b: np.abs(a - b)
MSE = lambda a, b: (a - b) ** 2


def _toy(seed=0, B=6, d=5):
    r = np.random.default_rng(seed)
    W, b = r.normal(size=(d, d)) * 0.3, r.normal(size=d)
    np_model = lambda x, tt: x @ W + tt[:, None] * b
    jx_model = lambda x, t: x @ jnp.asarray(W, jnp.float32) + (t.astype(jnp.float32) / T)[:, None] * jnp.asarray(b, jnp.float32)
    mu = r.normal(size=(B, d))
    z = mu + math.sqrt(0.008) * r.normal(size=(B, d))
    eps = r.normal(size=(B, d))
    ts = np.array([1, 2, 1, T, 7, 1][:B])
    return np_model, jx_model, mu, z, eps, ts


def test_constants_are_the_originals():
    assert ob.EDDPM_BETA == 0.008 and ob.EDDPM_ENCODER_LOGVAR == math.log(0.008)
    assert ob.EDDPM_TEXT_T == 1000 and ob.EDDPM_TEXT_DDPM_WEIGHT == 8.0 and ob.EDDPM_PROTEIN_DDPM_WEIGHT == 1.0
    assert ob.EDDPM_PROTEIN_PAD_WEIGHT == 0.8 and ob.EDDPM_TIME_EMBED_DIM == 64
    assert ob.EDDPM_DDPM_CLASS_CRITERION == "l1" and ob.EDDPM_TEXT_RUN_CRITERION == "mse"
    c = DiLEDLossConfig()
    assert (c.num_steps, c.beta, c.criterion, c.t1_form, c.rec_weighting, c.ddpm_weight) == \
        (1000, 0.008, "mse", "code", "code", 8.0)
    S = ob.eddpm_schedule(c)
    assert S.num_steps == 1001  # indices 0..T
    # the constant beta overwrote the linear one; alpha_bar_0 is 0.992, not 1; the t=1 weight alpha/beta = 124
    np.testing.assert_allclose(np.asarray(S.betas), 0.008)
    np.testing.assert_allclose(float(S.alphas_cumprod[0]), 0.992, rtol=1e-7)
    np.testing.assert_allclose(float(S.alphas_cumprod[1]), 0.992 ** 2, rtol=1e-7)
    np.testing.assert_allclose(float(S.alphas[1] / S.betas[1]), 124.0, rtol=1e-6)
    np.testing.assert_allclose(math.exp(0.5 * c.encoder_logvar), math.sqrt(0.008))


def test_schedule_matches_the_original_ddpm_schedules():
    S = ob.eddpm_schedule(DiLEDLossConfig(num_steps=T))
    ref = np_ddpm_schedules(1e-4, 0.02, T)
    np.testing.assert_allclose(np.asarray(S.sqrt_alphas_cumprod), ref["sqrtab"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(S.sqrt_one_minus_alphas_cumprod), ref["sqrtmab"], rtol=1e-6)
    t = jnp.arange(1, T + 1)
    np.testing.assert_allclose(np.asarray(ob.loss_weight(S, t)), ref["loss_weight"][1:], rtol=1e-5)


@pytest.mark.parametrize("crit,form", [("l1", "code"), ("mse", "code"), ("mse", "exact"), ("l1", "exact")])
def test_forward_new_and_the_t1_branch_match_the_transcription(crit, form):
    np_model, jx_model, mu, z, eps, ts = _toy()
    cfg = DiLEDLossConfig(num_steps=T, criterion=crit, t1_form=form)
    S = ob.eddpm_schedule(cfg)
    ref, ref_w = np_forward_new(np_ddpm_schedules(1e-4, 0.02, T), z, mu, ts, eps, np_model,
                                L1 if crit == "l1" else MSE, exact=form == "exact")
    got, w, aux = ob.latent_diffusion_loss(jx_model, jnp.asarray(z, jnp.float32), jnp.asarray(mu, jnp.float32),
                                           jax.random.key(0), S, cfg, t=ts, noise=jnp.asarray(eps, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(w), ref_w[:, 0], rtol=1e-5)
    assert (ts == 1).sum() == 3  # the branch is exercised


def test_code_t1_form_does_not_invert_the_forward_step_and_exact_does():
    """With a perfect denoiser (eps_hat = the true noise) and mu = z, the exact alignment term is 0; the code's is
    not (1/sqrt(alpha_1) and sqrt(beta_1) are not the coefficients of x_1 = alpha z + sqrt(1-alpha^2) eps)."""
    _, _, mu, _, eps, _ = _toy()
    z = jnp.asarray(mu, jnp.float32)
    noise = jnp.asarray(eps, jnp.float32)
    oracle = lambda x_t, t: noise
    ones = np.ones(len(mu), np.int32)
    out = {}
    for form in ("code", "exact"):
        cfg = DiLEDLossConfig(num_steps=T, t1_form=form)
        out[form], _, _ = ob.latent_diffusion_loss(oracle, z, z, jax.random.key(0), ob.eddpm_schedule(cfg), cfg,
                                                   t=ones, noise=noise)
    np.testing.assert_allclose(np.asarray(out["exact"]), 0.0, atol=1e-6)
    assert float(np.min(out["code"])) > 1e-3


def test_combine_is_the_originals_broadcast_and_the_per_example_option():
    r = np.random.default_rng(1)
    rec, ddpm = r.uniform(1, 3, size=6), r.uniform(0, 1, size=6)
    lw = np_ddpm_schedules(1e-4, 0.02, T)["loss_weight"][np.array([1, 2, 3, 10, 40, 50])][:, None]  # [B, 1]
    ref = (1 / (lw * T) * rec).mean() + 8.0 * ddpm.mean()  # [B,1] * [B] -> [B, B], as the original
    a = lambda v: jnp.asarray(v, jnp.float32)
    cfg = DiLEDLossConfig(num_steps=T)
    np.testing.assert_allclose(float(ob.combine(a(rec), a(ddpm), a(lw[:, 0]), cfg)), ref, rtol=1e-5)
    per = (rec / (lw[:, 0] * T)).mean() + 8.0 * ddpm.mean()
    assert abs(per - ref) > 1e-3  # the two weightings differ
    np.testing.assert_allclose(float(ob.combine(a(rec), a(ddpm), a(lw[:, 0]), cfg.replace(rec_weighting="per_example"))),
                               per, rtol=1e-5)
    np.testing.assert_allclose(float(ob.combine(a(rec), a(ddpm), a(lw[:, 0]), cfg.replace(ddpm_weight=0.0))),
                               rec.mean(), rtol=1e-6)


def test_reconstruction_terms_match_the_originals():
    r = np.random.default_rng(2)
    B, L, V, pad = 3, 6, 7, 6
    logits = r.normal(size=(B, L, V))
    labels = np.array([[5, 1, 2, 3, pad, pad], [5, 4, pad, pad, pad, pad], [5, 1, 1, 1, 1, 2]])
    lsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    # GPT2ForLatentConnector: CE(shift_logits, shift_labels, ignore_index=pad, reduction='none').sum(-1) / sent_length
    nll = -np.take_along_axis(lsm[:, :-1], labels[:, 1:, None], -1)[..., 0]
    ref = np.where(labels[:, 1:] != pad, nll, 0).sum(-1) / (labels != pad).sum(-1)
    np.testing.assert_allclose(np.asarray(ob.text_rec_loss(jnp.asarray(logits), jnp.asarray(labels), pad)), ref,
                               rtol=1e-5)
    # ReLSO: CrossEntropyLoss(weight=w with w[21] = 0.8, reduction='none')(x_hat [B, 22, L], x) .mean(axis=1)
    lg = r.normal(size=(B, 5, 22))
    x = r.integers(0, 22, size=(B, 5))
    x[:, -1] = 21
    w = np.ones(22)
    w[21] = 0.8
    lsm = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    ref = (w[x] * -np.take_along_axis(lsm, x[..., None], -1)[..., 0]).mean(1)
    np.testing.assert_allclose(np.asarray(ob.weighted_ce_loss(jnp.asarray(lg), jnp.asarray(x), w)), ref, rtol=1e-5)


def test_bad_options_name_the_field():
    for kw, msg in [({"criterion": "l2"}, "criterion="), ({"t1_form": "x"}, "t1_form="),
                    ({"rec_weighting": "x"}, "rec_weighting="), ({"num_steps": 0}, "num_steps="),
                    ({"ddpm_weight": -1.0}, "ddpm_weight="), ({"beta": 1.5}, "beta=")]:
        with pytest.raises(ConfigError, match=msg):
            DiLEDLossConfig(**kw)
