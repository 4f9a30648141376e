"""DiLED = a modality autoencoder + the latent denoiser MLPSkipNet, trained jointly by `diled_loss` (one jitted
function through the engine's step, or `loss_jit` on its own).

Presets (`diled_config(modality, size)`): "tiny" runs in minutes on a laptop CPU; "paper" documents the original's
scale for a GPU:
- text: BERT-small encoder (4 layers, 512 wide, 8 heads: prajjwal1/bert-small) and a GPT-2-XL decoder (48 layers,
  1600 wide, 25 heads; we give it the GPT-2 vocabulary size 50258 incl. pad), latent 128, block 32 tokens, T 1000,
  ddpm_weight 8, MLPSkipNet 20 x 2048, MSE criterion (train_joint_split_data_DDP_yelp.sh).
- protein: ReLSO sizes (embedding 100 -> a 6-layer, 4-head encoder, hidden 200, latent 30), T 1000,
  ddpm_weight 1, MSE, joint fitness regressor (Protein/train.py defaults).
- image: a conv autoencoder for 8 x 8 digits (the original's image experiments use DiffAE's UNet decoder at
  64-256 px; not reproduced here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ConfigError
from jaxlm.models.diled.autoencoders import (ImageAE, ImageAEConfig, ProteinAE, ProteinAEConfig, TextAE,
                                             TextAEConfig, _tiny_decoder)
from jaxlm.models.diled.denoiser import MLPSKIPNET_PAPER, MLPSKIPNET_TINY, MLPSkipNet, MLPSkipNetConfig
from jaxlm.models.diled.objective import (EDDPM_PROTEIN_DDPM_WEIGHT, DiLEDLossConfig, combine, eddpm_schedule,
                                          encoder_sample, latent_diffusion_loss)

MODALITIES = ("text", "image", "protein")
TINY_BPE_VOCAB = 1024
_AE = {"text": (TextAEConfig, TextAE), "image": (ImageAEConfig, ImageAE), "protein": (ProteinAEConfig, ProteinAE)}


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ConfigError(f"modality={modality!r}: expected one of {list(MODALITIES)}")
    return modality


@dataclass(frozen=True)
class DiLEDConfig:
    modality: str = "image"
    ae: object = field(default_factory=ImageAEConfig)
    denoiser: MLPSkipNetConfig = field(default_factory=lambda: MLPSkipNetConfig(16, **MLPSKIPNET_TINY))
    loss: DiLEDLossConfig = field(default_factory=DiLEDLossConfig)
    joint_regressor: bool = False     # proteins: + MSE(fitness(z), y) (the original's --joint_regressor)
    objective: str = "diled"          # "diled" | "vae" (the baseline: learned variance, kl_weight * KL,
                                      # prior samples; proteins need ae.learned_variance: vae_config)
    kl_weight: float = 1.0

    def __post_init__(self):
        check_modality(self.modality)
        want = _AE[self.modality][0]
        if not isinstance(self.ae, want):
            raise ConfigError(f"DiLEDConfig.ae is a {type(self.ae).__name__}; modality={self.modality!r} needs a "
                              f"{want.__name__}")
        if self.denoiser.latent_dim != self.ae.latent_dim:
            raise ConfigError(f"DiLEDConfig: denoiser.latent_dim={self.denoiser.latent_dim} != "
                              f"ae.latent_dim={self.ae.latent_dim}")
        if self.objective not in ("diled", "vae"):
            raise ConfigError(f"objective={self.objective!r}: expected 'diled' or 'vae'")
        if self.objective == "vae" and self.modality == "protein" and not self.ae.learned_variance:
            raise ConfigError("objective='vae' with modality='protein' needs ae.learned_variance=True (a "
                              "log-variance head); see vae_config()")
        if self.joint_regressor and not (self.modality == "protein" and self.ae.fitness_head):
            raise ConfigError("DiLEDConfig.joint_regressor needs modality='protein' with ae.fitness_head=True")

    @property
    def latent_dim(self) -> int:
        return self.ae.latent_dim

    def replace(self, **kw) -> "DiLEDConfig":
        return dataclasses.replace(self, **kw)


def diled_config(modality: str, size: str = "tiny", **loss_overrides) -> DiLEDConfig:
    """A preset: diled_config("text", "tiny", ddpm_weight=0.0)."""
    check_modality(modality)
    if size not in ("tiny", "paper"):
        raise ConfigError(f"size={size!r}: expected 'tiny' or 'paper'")
    paper = size == "paper"
    if modality == "text":
        if paper:
            enc = _tiny_decoder(False, vocab_size=50258, hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=8,
                                head_dim=64, intermediate_size=2048, norm="layer", mlp="gelu")
            dec = _tiny_decoder(True, vocab_size=50258, hidden_size=1600, num_layers=48, num_heads=25,
                                num_kv_heads=25, head_dim=64, intermediate_size=6400, norm="layer", mlp="gelu",
                                max_position_embeddings=1024)
            ae = TextAEConfig(encoder=enc, decoder=dec, latent_dim=128, max_len=32, pad_id=50257, bos_id=50256,
                              eos_id=50256)
        else:   # the corpus BPE (1021 pieces + PAD, BOS, EOS): ~11 pieces a sentence, <= 26
            ae = TextAEConfig(encoder=_tiny_decoder(False, vocab_size=TINY_BPE_VOCAB, bos_token_id=TINY_BPE_VOCAB - 2,
                                                    eos_token_id=TINY_BPE_VOCAB - 1),
                              decoder=_tiny_decoder(True, vocab_size=TINY_BPE_VOCAB, bos_token_id=TINY_BPE_VOCAB - 2,
                                                    eos_token_id=TINY_BPE_VOCAB - 1),
                              max_len=32, pad_id=TINY_BPE_VOCAB - 3, bos_id=TINY_BPE_VOCAB - 2,
                              eos_id=TINY_BPE_VOCAB - 1, tokenizer="bpe")
        loss = DiLEDLossConfig(num_steps=1000 if paper else 200)
    elif modality == "image":
        ae = ImageAEConfig(width=64 if paper else 32, latent_dim=32 if paper else 16)
        loss = DiLEDLossConfig(num_steps=1000 if paper else 200, ddpm_weight=1.0)
    else:
        enc = _tiny_decoder(True, vocab_size=22, hidden_size=100 if paper else 64, num_layers=6 if paper else 2,
                            num_heads=4, num_kv_heads=4, head_dim=25 if paper else 16,
                            rotary_dim=24 if paper else None,   # ReLSO: 100 wide / 4 heads = 25 (RoPE needs even)
                            intermediate_size=200 if paper else 128, bos_token_id=None, eos_token_id=None)
        ae = ProteinAEConfig(encoder=enc, latent_dim=30 if paper else 16, hidden=200 if paper else 64)
        loss = DiLEDLossConfig(num_steps=1000 if paper else 200, ddpm_weight=EDDPM_PROTEIN_DDPM_WEIGHT)
    den = MLPSkipNetConfig(ae.latent_dim, **(MLPSKIPNET_PAPER if paper else MLPSKIPNET_TINY))
    return DiLEDConfig(modality, ae, den, loss.replace(**loss_overrides), joint_regressor=modality == "protein")


def vae_config(cfg: DiLEDConfig, kl_weight: float | None = None) -> DiLEDConfig:
    """The VAE baseline of a preset: the same networks, objective='vae' (proteins: + the log-variance head)."""
    if cfg.modality == "protein":
        cfg = cfg.replace(ae=dataclasses.replace(cfg.ae, learned_variance=True))
    return cfg.replace(objective="vae", kl_weight=cfg.kl_weight if kl_weight is None else kl_weight)


class DiLED(nnx.Module):
    def __init__(self, cfg: DiLEDConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.ae = _AE[cfg.modality][1](cfg.ae, rngs=rngs)
        self.denoiser = MLPSkipNet(cfg.denoiser, rngs=rngs)

    def eps(self, x_t, t, cond=None):
        """ε̂(x_t, t) for integer t (the denoiser sees t / T, as the original)."""
        return self.denoiser(x_t, jnp.asarray(t, jnp.float32) / self.cfg.loss.num_steps)

    def encode(self, batch):
        return self.ae.encode(batch)


def jit_init(ctor):
    """ctor() -> nnx.Module, with every parameter drawn in ONE compiled function (eager init compiles a random
    draw per distinct shape: slow on CPU)."""
    g, _ = nnx.split(nnx.eval_shape(ctor))
    return nnx.merge(g, jax.jit(lambda: nnx.split(ctor())[1])())


def init_diled(cfg: DiLEDConfig, seed: int = 0) -> DiLED:
    return jit_init(lambda: DiLED(cfg, rngs=nnx.Rngs(seed)))


def diled_loss(model: DiLED, batch: dict, rng, *, t=None, noise=None, latent_noise=None):
    """(total loss, metrics) of one batch: μ = E(x), z = μ + √0.008 n, reconstruction of x from z, the latent
    diffusion term on z (alignment to μ at t = 1), combined as the original; proteins with joint_regressor add the
    fitness MSE. t / noise / latent_noise can be given (tests)."""
    cfg = model.cfg
    lc = cfg.loss
    k_enc, k_diff = jax.random.split(rng)
    if cfg.objective == "vae":
        return _vae_loss(model, batch, k_enc)
    mu = model.encode(batch)
    z = mu + jnp.exp(0.5 * lc.encoder_logvar) * latent_noise if latent_noise is not None else \
        encoder_sample(mu, k_enc, lc)
    rec = _rec(model, z, batch, rng)
    dl, w, aux = latent_diffusion_loss(model.eps, z, mu, k_diff, eddpm_schedule(lc), lc, t=t, noise=noise)
    total = combine(rec, dl, w, lc)
    metrics = {"rec": rec.mean(), "ddpm": dl.mean(), "align_frac": (aux["t"] == 1).mean()}
    if cfg.joint_regressor:
        reg = jnp.mean((model.ae.fitness(z) - batch["fitness"]) ** 2)
        total = total + reg
        metrics["fitness_mse"] = reg
    return total, metrics


def _rec(model, z, batch, rng):
    """The autoencoder's per-example reconstruction term; text with word_dropout gets its own key (fold_in, so the
    encoder / diffusion draws are those of the original form)."""
    if model.cfg.modality == "text" and model.cfg.ae.word_dropout > 0:
        return model.ae.rec_loss(z, batch, jax.random.fold_in(rng, 7))
    return model.ae.rec_loss(z, batch)


def _vae_loss(model, batch, rng):
    """The VAE baseline: rec(z) + kl_weight · KL(q(z|x) || N(0, I)) (summed over latent dims, batch mean)."""
    mu, logvar = model.ae.encode_stats(batch)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, mu.dtype)
    rec = _rec(model, z, batch, rng)
    kl = 0.5 * jnp.sum(mu * mu + jnp.exp(logvar) - logvar - 1.0, axis=-1)
    total = jnp.mean(rec) + model.cfg.kl_weight * jnp.mean(kl)
    metrics = {"rec": rec.mean(), "kl": kl.mean()}
    if model.cfg.joint_regressor:   # proteins: the fitness head trains on z as in every other protein model
        reg = jnp.mean((model.ae.fitness(z) - batch["fitness"]) ** 2)
        total = total + reg
        metrics["fitness_mse"] = reg
    return total, metrics


def _loss_pure(graphdef, state, batch, rng):
    return diled_loss(nnx.merge(graphdef, state), batch, rng)


loss_jit = jax.jit(_loss_pure, static_argnums=0)

__all__ = ["DiLED", "DiLEDConfig", "diled_config", "vae_config", "diled_loss", "loss_jit", "init_diled", "jit_init", "MODALITIES", "check_modality"]
