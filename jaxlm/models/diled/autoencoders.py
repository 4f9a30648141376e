"""DiLED's learnable encoders q(x1|x0) = N(E(x0), 0.008 I) and decoders p(x0|x1), one per modality.

Each autoencoder has `encode(batch) -> μ [B, d]`, `rec_loss(z, batch) -> [B]` (the original's per-example
reconstruction term) and the decoding pieces the capabilities use (jaxlm.models.diled.api).

- `TextAE` (Optimus / EDDPM text): a jaxlm bidirectional encoder (DecoderConfig causal=False) over
  [BOS] sentence [EOS], pooled BERT-style (tanh(Linear(h_[BOS]))), Linear(hidden, 2d, no bias) -> (μ, logvar);
  a jaxlm causal decoder conditioned on z twice, as the original's `GPT2ModelForVAE`:
  `latent_as_gpt_emb` (Linear(d, D, no bias)(z) added to every token embedding) and `latent_as_gpt_memory`
  (Linear(d, L·KV·Dh, no bias)(z): one key = value slot per layer, before the tokens). The memory slot is written
  into slot 0 of the decoder's own KV cache (lengths = 1): tokens then sit at positions 1..T and attend to it, like
  GPT-2's `past_key_values` with past_length 1; no change to DecoderLM was needed. RoPE at position 0 is the
  identity, so the slot is an unrotated key, like GPT-2's.
- `ImageAE`: conv encoder / decoder from jaxlm.nn.conv (Conv, stride-2 Conv, Upsample, GroupNorm), MSE per image.
- `ProteinAE` (ReLSO-style, Protein/codes/nn/models.py `RelsoDiffusion`): embedding over the 22-symbol alphabet,
  a jaxlm transformer encoder (causal by default: ReLSO passes its square subsequent mask as src_mask), attention
  pooling softmax_l(Linear(E, 1)(h_l)), Linear(E, d) -> μ; decoder Linear(d, L·H/2) -> residual conv1d block
  -> Conv1d(H, 22, 3) logits per position; optional fitness head Linear(d, 64) · ReLU · Linear(64, 1) on z.
  Differences: RoPE instead of sinusoidal positions, GroupNorm instead of BatchNorm, no spectral norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import DecoderConfig
from jaxlm.errors import ConfigError, ShapeError
from jaxlm.models.decoder import DecoderLM, KVCache
from jaxlm.models.diled.objective import (EDDPM_PROTEIN_PAD_WEIGHT, image_rec_loss, text_rec_loss,
                                          weighted_ce_loss)
from jaxlm.nn import Linear
from jaxlm.nn.conv import Conv, GroupNorm, Upsample

# ------------------------------------------------------------------------------------------------- text

BYTE_PAD, BYTE_BOS, BYTE_EOS = 256, 257, 258
BYTE_VOCAB = 259


def _tiny_decoder(causal: bool, **kw) -> DecoderConfig:
    base = dict(family="llama", vocab_size=BYTE_VOCAB, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                head_dim=16, intermediate_size=128, max_position_embeddings=128, causal=causal,
                tie_embeddings=True, bos_token_id=BYTE_BOS, eos_token_id=BYTE_EOS)
    return DecoderConfig(**{**base, **kw})


@dataclass(frozen=True)
class TextAEConfig:
    encoder: DecoderConfig = field(default_factory=lambda: _tiny_decoder(False))
    decoder: DecoderConfig = field(default_factory=lambda: _tiny_decoder(True))
    latent_dim: int = 32
    max_len: int = 48          # token slots incl. BOS / EOS
    pad_id: int = BYTE_PAD
    bos_id: int = BYTE_BOS
    eos_id: int = BYTE_EOS
    tokenizer: str = "bytes"   # "bytes" | "bpe" (data.corpus_bpe(decoder.vocab_size): the tiny preset's)
    word_dropout: float = 0.0  # training only: each decoder input token after BOS replaced by PAD with this
                               # probability (Bowman et al. 2016), so the decoder must read z; 0 = the original

    def __post_init__(self):
        if self.tokenizer not in ("bytes", "bpe"):
            raise ConfigError(f"TextAEConfig.tokenizer={self.tokenizer!r}: expected 'bytes' or 'bpe'")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ConfigError(f"TextAEConfig.word_dropout={self.word_dropout}: expected a probability in [0, 1)")
        if self.encoder.causal:
            raise ConfigError("TextAEConfig.encoder: causal=True; the DiLED text encoder is bidirectional")
        if not self.decoder.causal:
            raise ConfigError("TextAEConfig.decoder: causal=False; the DiLED text decoder is causal")
        for n in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, n) < self.decoder.vocab_size:
                raise ConfigError(f"TextAEConfig.{n}={getattr(self, n)} outside the vocabulary "
                                  f"({self.decoder.vocab_size})")


class TextAE(nnx.Module):
    def __init__(self, cfg: TextAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, d = cfg.encoder, cfg.decoder
        self.encoder = DecoderLM(e, rngs=rngs)
        self.pooler = Linear(e.hidden_size, e.hidden_size, ("embed", "mlp"), bias=True, rngs=rngs)
        self.to_latent = Linear(e.hidden_size, 2 * cfg.latent_dim, ("mlp", None), rngs=rngs)
        self.decoder = DecoderLM(d, rngs=rngs)
        self.latent_emb = Linear(cfg.latent_dim, d.hidden_size, (None, "embed"), rngs=rngs)
        self.latent_mem = Linear(cfg.latent_dim, d.num_layers * d.num_kv_heads * d.head_dim, (None, "mlp"),
                                 rngs=rngs)

    def check_tokens(self, ids):
        if ids.ndim != 2 or ids.shape[1] > self.cfg.max_len:
            raise ShapeError(f"text tokens have shape {tuple(ids.shape)}; expected [B, T] with T <= max_len="
                             f"{self.cfg.max_len}")

    def encode_stats(self, batch):
        """(μ, log-variance) [B, d] each (Optimus' `linear`): DiLED fixes the variance (log 0.008) and uses μ; the
        VAE baseline learns it."""
        ids = batch["tokens"]
        self.check_tokens(ids)
        _, _, _, h = self.encoder(ids, mask=ids != self.cfg.pad_id, return_hidden=True)
        h = self.encoder.final_norm(h)
        pooled = jnp.tanh(self.pooler(h[:, 0]))
        mu, logvar = jnp.split(self.to_latent(pooled), 2, axis=-1)
        return mu, logvar

    def encode(self, batch):
        return self.encode_stats(batch)[0]

    def memory_cache(self, z, max_len: int) -> KVCache:
        """A decoder KV cache of 1 + max_len slots whose slot 0 holds the latent memory (key = value)."""
        d = self.cfg.decoder
        B = z.shape[0]
        mem = self.latent_mem(z).reshape(B, d.num_layers, 1, d.num_kv_heads, d.head_dim).transpose(1, 0, 2, 3, 4)
        pad = jnp.zeros((d.num_layers, B, max_len, d.num_kv_heads, d.head_dim), mem.dtype)
        kv = jnp.concatenate([mem, pad], axis=2)
        return KVCache(kv, kv, jnp.ones((B,), jnp.int32))

    def decode_step(self, z, ids, cache: KVCache):
        """Logits [B, T, V] for token ids [B, T] after the cache (each token embedding + the latent projection)."""
        emb = self.decoder.embed_tokens(ids) + self.latent_emb(z)[:, None, :].astype(jnp.float32)
        return self.decoder(None, cache=cache, embeds=emb)

    def decode_logits(self, z, ids):
        logits, _ = self.decode_step(z, ids, self.memory_cache(z, ids.shape[1]))
        return logits

    def rec_loss(self, z, batch, rng=None):
        """Per-sentence CE; with word_dropout > 0 and an rng (training) the decoder's inputs after BOS are dropped
        to PAD at that rate (the labels stay the sentence)."""
        ids = batch["tokens"]
        self.check_tokens(ids)
        inp = ids
        if self.cfg.word_dropout > 0 and rng is not None:
            drop = jax.random.bernoulli(rng, self.cfg.word_dropout, ids.shape).at[:, 0].set(False)
            inp = jnp.where(drop & (ids != self.cfg.pad_id), self.cfg.pad_id, ids)
        return text_rec_loss(self.decode_logits(z, inp), ids, self.cfg.pad_id)


# ------------------------------------------------------------------------------------------------ images


@dataclass(frozen=True)
class ImageAEConfig:
    size: int = 8              # square images, size divisible by 4
    channels: int = 1
    width: int = 32
    latent_dim: int = 16
    groups: int = 8

    def __post_init__(self):
        if self.size % 4:
            raise ConfigError(f"ImageAEConfig.size={self.size}: must be divisible by 4 (two 2x downsamplings)")


def _down(ch, rngs):
    """ADM's stride-2 3x3 conv (padding 1) with the padding as a tuple (nn.conv.Downsample stores a list, which
    makes the graphdef unhashable for jax.jit static arguments)."""
    return Conv(ch, ch, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)


class ImageAE(nnx.Module):
    def __init__(self, cfg: ImageAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        w, c, s4 = cfg.width, cfg.channels, cfg.size // 4
        self.e_in = Conv(c, w, (3, 3), rngs=rngs)
        self.e_down1 = _down(w, rngs)
        self.e_conv = Conv(w, 2 * w, (3, 3), rngs=rngs)
        self.e_norm = GroupNorm(2 * w, cfg.groups)
        self.e_down2 = _down(2 * w, rngs)
        self.e_out = Linear(s4 * s4 * 2 * w, 2 * cfg.latent_dim, ("mlp", None), rngs=rngs,
                            std=1.0 / math.sqrt(s4 * s4 * 2 * w))
        self.d_in = Linear(cfg.latent_dim, s4 * s4 * 2 * w, (None, "mlp"), bias=True, rngs=rngs,
                           std=1.0 / math.sqrt(cfg.latent_dim))
        self.d_up1 = Upsample(2 * w, (2, 2), rngs=rngs)
        self.d_conv = Conv(2 * w, w, (3, 3), rngs=rngs)
        self.d_norm = GroupNorm(w, cfg.groups)
        self.d_up2 = Upsample(w, (2, 2), rngs=rngs)
        self.d_out = Conv(w, c, (3, 3), rngs=rngs)

    def check_images(self, x):
        c = self.cfg
        if x.ndim != 4 or tuple(x.shape[1:]) != (c.size, c.size, c.channels):
            raise ShapeError(f"images have shape {tuple(x.shape)}; expected [B, {c.size}, {c.size}, {c.channels}]")

    def encode_stats(self, batch):
        """(μ, log-variance) [B, d] each: DiLED fixes the variance; the VAE baseline learns it."""
        x = batch["image"]
        self.check_images(x)
        h = jax.nn.silu(self.e_in(x))
        h = jax.nn.silu(self.e_down1(h))
        h = jax.nn.silu(self.e_norm(self.e_conv(h)))
        h = self.e_down2(h).reshape(x.shape[0], -1)
        mu, logvar = jnp.split(self.e_out(h), 2, axis=-1)
        return mu, logvar

    def encode(self, batch):
        return self.encode_stats(batch)[0]

    def decode(self, z):
        c, s4 = self.cfg, self.cfg.size // 4
        h = jax.nn.silu(self.d_in(z)).reshape(z.shape[0], s4, s4, 2 * c.width)
        h = jax.nn.silu(self.d_up1(h))
        h = jax.nn.silu(self.d_norm(self.d_conv(h)))
        return self.d_out(jax.nn.silu(self.d_up2(h)))

    def rec_loss(self, z, batch):
        return image_rec_loss(self.decode(z), batch["image"])


# ---------------------------------------------------------------------------------------------- proteins

PROTEIN_ALPHABET = "ILVFMCAGPTSYWQNHEDKRXJ"   # ReLSO's SEQ2IND order: index 21 = 'J' (pad), 20 = 'X'
PROTEIN_PAD = 21


@dataclass(frozen=True)
class ProteinAEConfig:
    seq_len: int = 20
    encoder: DecoderConfig = field(default_factory=lambda: _tiny_decoder(
        True, vocab_size=len(PROTEIN_ALPHABET), hidden_size=64, num_layers=2, intermediate_size=128,
        bos_token_id=None, eos_token_id=None))
    latent_dim: int = 16
    hidden: int = 64            # ReLSO's hidden_dim (the decoder works at hidden // 2, then hidden)
    groups: int = 8
    fitness_head: bool = True
    pad_weight: float = EDDPM_PROTEIN_PAD_WEIGHT
    learned_variance: bool = False   # + a log-variance head next to to_mu (the VAE baseline; DiLED fixes it)

    def __post_init__(self):
        if self.encoder.vocab_size != len(PROTEIN_ALPHABET):
            raise ConfigError(f"ProteinAEConfig.encoder.vocab_size={self.encoder.vocab_size}: the protein "
                              f"alphabet has {len(PROTEIN_ALPHABET)} symbols")


class ProteinAE(nnx.Module):
    def __init__(self, cfg: ProteinAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        E, H, L, d = cfg.encoder.hidden_size, cfg.hidden, cfg.seq_len, cfg.latent_dim
        self.encoder = DecoderLM(cfg.encoder, rngs=rngs)
        self.attn_pool = Linear(E, 1, ("embed", None), bias=True, rngs=rngs)
        self.to_mu = Linear(E, d, ("embed", None), bias=True, rngs=rngs, std=1.0 / math.sqrt(E))
        if cfg.learned_variance:
            self.to_logvar = Linear(E, d, ("embed", None), bias=True, rngs=rngs, std=1.0 / math.sqrt(E))
        self.d_in = Linear(d, L * (H // 2), (None, "mlp"), bias=True, rngs=rngs, std=1.0 / math.sqrt(d))
        self.d_c1 = Conv(H // 2, H, (3,), bias=False, rngs=rngs)
        self.d_n1 = GroupNorm(H, cfg.groups)
        self.d_c2 = Conv(H, H, (3,), bias=False, rngs=rngs)
        self.d_n2 = GroupNorm(H, cfg.groups)
        self.d_skip = Conv(H // 2, H, (1,), bias=False, rngs=rngs)
        self.d_out = Conv(H, len(PROTEIN_ALPHABET), (3,), rngs=rngs)
        if cfg.fitness_head:
            self.fit1 = Linear(d, 64, (None, "mlp"), bias=True, rngs=rngs, std=1.0 / math.sqrt(d))
            self.fit2 = Linear(64, 1, ("mlp", None), bias=True, rngs=rngs, std=1.0 / 8.0)

    def check_tokens(self, ids):
        if ids.ndim != 2 or ids.shape[1] != self.cfg.seq_len:
            raise ShapeError(f"protein tokens have shape {tuple(ids.shape)}; expected [B, {self.cfg.seq_len}]")

    def _pooled(self, batch):
        ids = batch["tokens"]
        self.check_tokens(ids)
        _, _, _, h = self.encoder(ids, return_hidden=True)
        h = self.encoder.final_norm(h)
        a = jax.nn.softmax(self.attn_pool(h), axis=1)      # [B, L, 1]
        return (a * h).sum(1)

    def encode(self, batch):
        return self.to_mu(self._pooled(batch))

    def encode_stats(self, batch):
        """(μ, log-variance) [B, d] each; needs learned_variance=True (the VAE baseline)."""
        if not self.cfg.learned_variance:
            raise ConfigError("ProteinAE.encode_stats: ProteinAEConfig.learned_variance=False (no log-variance head)")
        p = self._pooled(batch)
        return self.to_mu(p), self.to_logvar(p)

    def decode(self, z):
        c = self.cfg
        h = self.d_in(z).reshape(z.shape[0], c.seq_len, c.hidden // 2)
        y = jax.nn.relu(self.d_n1(self.d_c1(h)))
        y = self.d_n2(self.d_c2(y))
        h = jax.nn.relu(y + self.d_skip(h))
        return self.d_out(h)                                # [B, L, 22]

    def fitness(self, z):
        return self.fit2(jax.nn.relu(self.fit1(z)))[:, 0]

    def rec_loss(self, z, batch):
        w = jnp.ones((len(PROTEIN_ALPHABET),), jnp.float32).at[PROTEIN_PAD].set(self.cfg.pad_weight)
        return weighted_ce_loss(self.decode(z), batch["tokens"], w)


__all__ = ["TextAE", "TextAEConfig", "ImageAE", "ImageAEConfig", "ProteinAE", "ProteinAEConfig",
           "PROTEIN_ALPHABET", "PROTEIN_PAD", "BYTE_PAD", "BYTE_BOS", "BYTE_EOS", "BYTE_VOCAB"]
