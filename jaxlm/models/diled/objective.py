"""DiLED / EDDPM's training objective, exactly as the original code (guangyliu/EDDPM) computes it, with the paper's
variants as options.

The original (Text/code/examples/big_ae/modules/vae.py and Protein/codes/nn/models.py, `ddpm_schedules`,
`DDPM.forward_new`, `VAE_DDPM.forward`, `RelsoDiffusion.loss_function`):

- schedule: arrays indexed t = 0..T (T + 1 entries); a linear β is computed and then overwritten by the constant
  β = 0.008 (`beta_t = beta_t*0 + 0.008`), ᾱ_t = ∏_{s≤t}(1-β) (so ᾱ_0 = 0.992, not 1). In jaxlm terms this is
  `make_schedule("constant", T + 1, beta=0.008)` indexed by the original's t directly.
- encoder: μ from the encoder, log-variance fixed to log 0.008 (fb_mode 5 / ReLSO `encode`), z = μ + √0.008·n.
- t ~ U{1..T}; x_t = √ᾱ_t z + √(1-ᾱ_t) ε; the denoiser sees (x_t, t/T) and predicts ε.
- diffusion term per example: criterion(ε, ε̂).mean(-1); criterion = the DDPM class default L1 (text module) /
  MSE (the text run passes `nn.MSELoss(reduction='none')`, the protein class default is MSE).
- t = 1 (the alignment term): (α_1/β_1) · criterion(μ, x̂), x̂ = (1/√α_1)(x_1 - √β_1 ε̂) (`t1_form="code"`). This
  does NOT invert the forward step actually applied (x_1 = √ᾱ_1 z + √(1-ᾱ_1) ε with ᾱ_1 = α²);
  `t1_form="exact"` uses x̂ = (x_1 - √(1-ᾱ_1) ε̂)/√ᾱ_1 instead.
- loss_weight_t = 0.5 β_t / (α_t (1-ᾱ_t)); with ddpm_weight > 0 the total is
  `(1/(loss_weight[t][:, None] * T) * rec).mean() + ddpm_weight * ddpm.mean()`. loss_weight[t] is [B, 1] and
  rec is [B], so the product broadcasts to [B, B] and its mean is mean(1/(w T)) · mean(rec)
  (`rec_weighting="code"`); `"per_example"` is the intended mean(rec_i / (w_{t_i} T)). With ddpm_weight = 0:
  rec.mean() (+ 0 · ddpm: the autoencoder alone).
- reconstruction: text = summed token CE of the decoder (labels shifted, pad ignored) / the number of non-pad
  labels (BOS included: `loss_rec / sent_length`); proteins = CE with class weights (pad 'J', index 21, weighted
  0.8), mean over the 20 positions; images: MSE per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxlm.diffusion import make_schedule
from jaxlm.diffusion.schedules import Schedule
from jaxlm.errors import ConfigError

# The original's constants (pinned in tests/test_diled_objective.py).
EDDPM_BETA = 0.008                       # ddpm_schedules: beta_t = beta_t*0 + 0.008
EDDPM_ENCODER_LOGVAR = math.log(0.008)   # logvar = torch.log(torch.ones_like(logvar) * 0.008)
EDDPM_TEXT_T = 1000                      # train_joint_split_data_DDP_yelp.sh: --nt 1000
EDDPM_TEXT_DDPM_WEIGHT = 8.0             # ... --ddpm_weight 8
EDDPM_PROTEIN_DDPM_WEIGHT = 1.0          # Protein/README: "we used the default value of 1.0"
EDDPM_PROTEIN_PAD_WEIGHT = 0.8           # ce_loss_weights[21] = 0.8
EDDPM_TIME_EMBED_DIM = 64                # MLPSkipNet.time_embed_dim
EDDPM_DDPM_CLASS_CRITERION = "l1"        # DDPM(..., criterion=nn.L1Loss()) in the text modules
EDDPM_TEXT_RUN_CRITERION = "mse"         # run_lm_joint_training...: DDPM(..., criterion=nn.MSELoss(reduction='none'))

CRITERIA = ("l1", "mse")
T1_FORMS = ("code", "exact")
REC_WEIGHTINGS = ("code", "per_example")


@dataclass(frozen=True)
class DiLEDLossConfig:
    """Options of the joint objective; the defaults are the original text run's."""

    num_steps: int = EDDPM_TEXT_T        # T (the original's n_T / --nt); schedules have T + 1 entries
    beta: float = EDDPM_BETA
    encoder_logvar: float = EDDPM_ENCODER_LOGVAR
    criterion: str = EDDPM_TEXT_RUN_CRITERION   # "l1" = the DDPM class default; the text run passes MSE
    t1_form: str = "code"                # "code" | "exact" (see the module docstring)
    rec_weighting: str = "code"          # "code" (the [B,1]*[B] broadcast) | "per_example"
    ddpm_weight: float = EDDPM_TEXT_DDPM_WEIGHT

    def __post_init__(self):
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ConfigError(f"num_steps={self.num_steps!r}: T must be a positive integer")
        for name, val, allowed in (("criterion", self.criterion, CRITERIA), ("t1_form", self.t1_form, T1_FORMS),
                                   ("rec_weighting", self.rec_weighting, REC_WEIGHTINGS)):
            if val not in allowed:
                raise ConfigError(f"{name}={val!r}: expected one of {list(allowed)}")
        if not 0.0 < self.beta < 1.0:
            raise ConfigError(f"beta={self.beta!r}: must lie in (0, 1)")
        if self.ddpm_weight < 0:
            raise ConfigError(f"ddpm_weight={self.ddpm_weight!r}: must be >= 0")

    def replace(self, **kw) -> "DiLEDLossConfig":
        import dataclasses

        return dataclasses.replace(self, **kw)


def eddpm_schedule(cfg: DiLEDLossConfig) -> Schedule:
    """The original's `ddpm_schedules` (T + 1 entries, index = the original's t)."""
    return make_schedule("constant", cfg.num_steps + 1, beta=cfg.beta)


def loss_weight(sched: Schedule, t):
    """The original's `loss_weight[t]` = 0.5 β_t / (α_t (1 - ᾱ_t))."""
    return 0.5 * sched.betas[t] / (sched.alphas[t] * (1.0 - sched.alphas_cumprod[t]))


def criterion(a, b, kind: str):
    """Elementwise L1 / squared error (the original's reduction='none' criterion)."""
    d = a - b
    return jnp.abs(d) if kind == "l1" else d * d


def encoder_sample(mu, rng, cfg: DiLEDLossConfig):
    """z = μ + exp(logvar / 2) · n with the fixed log-variance (the original's reparameterize)."""
    return mu + math.exp(0.5 * cfg.encoder_logvar) * jax.random.normal(rng, mu.shape, mu.dtype)


def latent_diffusion_loss(eps_fn, z, mu, rng, sched: Schedule, cfg: DiLEDLossConfig, *, t=None, noise=None):
    """`DDPM.forward_new(z, mu)`: per-example diffusion loss [B] (the alignment term where t = 1) and
    loss_weight[t] [B]. eps_fn(x_t, t) takes integer t in 1..T (models divide by T as the original does).
    t and noise may be given (tests); otherwise t ~ U{1..T}, noise ~ N(0, I)."""
    B = z.shape[0]
    kt, kn = jax.random.split(rng)
    if t is None:
        t = jax.random.randint(kt, (B,), 1, cfg.num_steps + 1)
    if noise is None:
        noise = jax.random.normal(kn, z.shape, z.dtype)
    t = jnp.asarray(t, jnp.int32)
    sab, smab = sched.sqrt_alphas_cumprod[t][:, None], sched.sqrt_one_minus_alphas_cumprod[t][:, None]
    x_t = sab * z + smab * noise
    eps_hat = eps_fn(x_t, t)
    loss = criterion(noise, eps_hat, cfg.criterion).mean(-1)
    a1, b1 = sched.alphas[1], sched.betas[1]
    if cfg.t1_form == "code":
        x_hat = (x_t - jnp.sqrt(b1) * eps_hat) / jnp.sqrt(a1)
    else:
        x_hat = (x_t - sched.sqrt_one_minus_alphas_cumprod[1] * eps_hat) / sched.sqrt_alphas_cumprod[1]
    loss_z0 = (a1 / b1) * criterion(mu, x_hat, cfg.criterion).mean(-1)
    return jnp.where(t == 1, loss_z0, loss), loss_weight(sched, t), {"t": t, "x_t": x_t, "eps_hat": eps_hat}


def combine(rec, ddpm_loss, weight, cfg: DiLEDLossConfig):
    """The total loss of `VAE_DDPM.forward` / `RelsoDiffusion.loss_function` from per-example reconstruction
    losses rec [B], diffusion losses [B] and loss_weight[t] [B]."""
    T = cfg.num_steps
    if cfg.ddpm_weight > 0:
        if cfg.rec_weighting == "code":
            rec_term = jnp.mean(1.0 / (weight * T)) * jnp.mean(rec)
        else:
            rec_term = jnp.mean(rec / (weight * T))
        return rec_term + cfg.ddpm_weight * jnp.mean(ddpm_loss)
    return jnp.mean(rec) + 0.0 * jnp.mean(ddpm_loss)


def text_rec_loss(logits, labels, pad_id: int):
    """Optimus / EDDPM text reconstruction per sequence [B]: CE of logits[:, :-1] vs labels[:, 1:] summed over
    non-pad targets, divided by the number of non-pad labels (BOS included, as `loss_rec / sent_length`)."""
    tgt = labels[:, 1:]
    lg = logits[:, :-1].astype(jnp.float32)
    nll = jax.nn.logsumexp(lg, -1) - jnp.take_along_axis(lg, tgt[..., None], -1)[..., 0]
    keep = tgt != pad_id
    summed = jnp.where(keep, nll, 0.0).sum(-1)
    return summed / jnp.maximum((labels != pad_id).sum(-1), 1).astype(jnp.float32)


def weighted_ce_loss(logits, targets, class_weights):
    """torch CrossEntropyLoss(weight=w, reduction='none') then .mean(axis=1): mean_l w[y_l] CE_l  [B]."""
    lg = logits.astype(jnp.float32)
    nll = jax.nn.logsumexp(lg, -1) - jnp.take_along_axis(lg, targets[..., None], -1)[..., 0]
    return (jnp.asarray(class_weights, jnp.float32)[targets] * nll).mean(-1)


def image_rec_loss(x_hat, x):
    """Per-image mean squared error [B]."""
    return ((x_hat.astype(jnp.float32) - x.astype(jnp.float32)) ** 2).reshape(x.shape[0], -1).mean(-1)


__all__ = ["DiLEDLossConfig", "eddpm_schedule", "loss_weight", "criterion", "encoder_sample",
           "latent_diffusion_loss", "combine", "text_rec_loss", "weighted_ce_loss", "image_rec_loss",
           "EDDPM_BETA", "EDDPM_ENCODER_LOGVAR", "EDDPM_TEXT_T", "EDDPM_TEXT_DDPM_WEIGHT",
           "EDDPM_PROTEIN_DDPM_WEIGHT", "EDDPM_PROTEIN_PAD_WEIGHT", "EDDPM_TIME_EMBED_DIM", "EDDPM_DDPM_CLASS_CRITERION",
           "EDDPM_TEXT_RUN_CRITERION"]
