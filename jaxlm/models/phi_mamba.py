"""Phi-Mamba and Hybrid Phi-Mamba (MOHAWK, goombalab/phi-mamba), and more generally any `DecoderConfig` block
structure with discrete Mamba-2 mixers in place of attention.

The block structure (norm kind, parallel vs sequential block, MLP kind, biases, embeddings, head) comes from a
`DecoderConfig`, so the same class is Phi-Mamba (Phi-1.5's parallel block: one LayerNorm feeding mixer and MLP) and
the MOHAWK recipe's SmolLM2 student (sequential RMSNorm/SwiGLU blocks). Layers listed in `attn_layers` keep a
`jaxlm.nn.Attention` mixer (Hybrid Phi-Mamba); all others use `DiscreteMamba2Mixer`.

Layers are held in a Python list (the layer kinds differ in the hybrid), so a forward unrolls over layers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import DecoderConfig, preset
from jaxlm.errors import ConfigError
from jaxlm.nn import MLP, Attention, Linear, Norm, param
from jaxlm.nn.ssd import DiscreteMamba2Mixer
from jaxlm.sharding import shard


@dataclass(frozen=True)
class PhiMambaConfig:
    base: DecoderConfig = dataclasses.field(default_factory=lambda: preset("phi-1.5"))
    d_state: int = 64
    ssm_heads: int | None = None  # None: base.num_heads (MOHAWK maps one SSM head to one attention head)
    expand: int = 1
    d_conv: int = 4
    conv_bias: bool = True
    chunk_size: int = 128
    ssm_bias: bool = False
    conv_activation: str = "identity"
    attn_layers: tuple = ()

    def __post_init__(self):
        L = self.base.num_layers
        bad = [i for i in self.attn_layers if not 0 <= int(i) < L]
        if bad:
            raise ConfigError(f"attn_layers={tuple(self.attn_layers)}: indices {bad} out of range for {L} layers")
        if self.conv_activation not in ("identity", "silu"):
            raise ConfigError(f"conv_activation={self.conv_activation!r}: expected 'identity' or 'silu'")
        d_inner = self.expand * self.base.hidden_size
        if d_inner % self.heads:
            raise ConfigError(f"expand*hidden_size={d_inner} is not a multiple of ssm_heads={self.heads}")

    @property
    def heads(self) -> int:
        return self.base.num_heads if self.ssm_heads is None else int(self.ssm_heads)

    @property
    def num_layers(self) -> int:
        return self.base.num_layers

    def replace(self, **kw) -> "PhiMambaConfig":
        unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s) {sorted(unknown)} for PhiMambaConfig")
        return dataclasses.replace(self, **kw)


def _phi_tiny_base(**kw):
    return preset("phi-tiny", vocab_size=256, hidden_size=64, num_heads=4, num_kv_heads=4, head_dim=16,
                  intermediate_size=256, **kw)


PHI_MAMBA_PRESETS = {
    # goombalab/Phi-Mamba: Phi-1.5 blocks, 24 discrete Mamba-2 mixers, d_state 64, 32 heads (vocab padded to x8)
    "phi-mamba-1.5b": lambda: PhiMambaConfig(base=preset("phi-1.5"), d_state=64),
    # Hybrid-Phi-Mamba: 4 attention layers interleaved (the exact indices are in the HF config, not in our sources:
    # these evenly spaced ones are a default, override with attn_layers=...)
    "hybrid-phi-mamba-1.5b": lambda: PhiMambaConfig(base=preset("phi-1.5"), d_state=64, attn_layers=(4, 10, 16, 22)),
    # the golden-fixture shapes (shared/fixtures/phi_mamba)
    "phi-mamba-tiny": lambda: PhiMambaConfig(base=_phi_tiny_base(), d_state=16),
    "hybrid-phi-mamba-tiny": lambda: PhiMambaConfig(base=_phi_tiny_base(num_layers=3), d_state=16, attn_layers=(1,)),
}


def phi_mamba_preset(name: str, **overrides) -> PhiMambaConfig:
    if name not in PHI_MAMBA_PRESETS:
        raise ConfigError(f"unknown Phi-Mamba preset {name!r}; known: {sorted(PHI_MAMBA_PRESETS)}")
    cfg = PHI_MAMBA_PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg


def make_ssm_mixer(cfg: PhiMambaConfig, rngs: nnx.Rngs) -> DiscreteMamba2Mixer:
    b = cfg.base
    return DiscreteMamba2Mixer(b.hidden_size, cfg.heads, cfg.d_state, cfg.expand, cfg.d_conv, cfg.conv_bias,
                               cfg.chunk_size, cfg.ssm_bias, cfg.conv_activation, b.init_std, jnp.dtype(b.dtype),
                               jnp.dtype(b.param_dtype), rngs=rngs)


class HybridBlock(nnx.Module):
    """A `DecoderLM` block (same attribute names: attn_norm, mlp_norm, mlp) whose mixer is a discrete Mamba-2 mixer
    (`self.mixer`) or attention (`self.attn`)."""

    def __init__(self, cfg: PhiMambaConfig, use_attention: bool, *, rngs: nnx.Rngs):
        b = cfg.base
        pdt = jnp.dtype(b.param_dtype)
        self.attn_norm = Norm(b.hidden_size, b.norm, b.norm_eps, param_dtype=pdt)
        self.parallel = b.block == "parallel"
        self.mlp_norm = None if self.parallel else Norm(b.hidden_size, b.norm, b.norm_eps, param_dtype=pdt)
        self.mlp = MLP(b.hidden_size, b.intermediate_size, b.mlp, bias=b.mlp_bias, std=b.init_std,
                       dtype=jnp.dtype(b.dtype), param_dtype=pdt, rngs=rngs)
        self.is_attention = bool(use_attention)
        self.attn = Attention(b, rngs=rngs) if use_attention else None
        self.mixer = None if use_attention else make_ssm_mixer(cfg, rngs)

    def mix(self, h, positions, state=None):
        """Mixer alone on normalized input h -> (out, new_state)."""
        if self.is_attention:
            return self.attn(h, positions)[0], None
        if state is None:
            return self.mixer(h), None
        return self.mixer(h, state)

    def matrix(self, h, positions):
        """[B, H, T, T]: attention probabilities, or the SSM transfer matrix (D on the diagonal)."""
        return self.attn.probs(h, positions) if self.is_attention else self.mixer.transfer_matrix(h)

    def __call__(self, x, positions, state=None):
        """-> (new x, new state, mixer output)."""
        h = self.attn_norm(x)
        m, state = self.mix(h, positions, state)
        if self.parallel:
            x = x + m + self.mlp(h)
        else:
            x = x + m
            x = x + self.mlp(self.mlp_norm(x))
        return shard(x, ("batch", "length", "act_embed")), state, m


class PhiMambaLM(nnx.Module):
    def __init__(self, cfg: PhiMambaConfig, *, rngs: nnx.Rngs = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.cfg = cfg
        b = cfg.base
        pdt = jnp.dtype(b.param_dtype)
        self.embed = param(rngs, (b.vocab_size, b.hidden_size), ("vocab", "embed"), b.init_std, pdt)
        attn = set(int(i) for i in cfg.attn_layers)
        self.layers = nnx.List([HybridBlock(cfg, i in attn, rngs=rngs) for i in range(b.num_layers)])
        self.final_norm = Norm(b.hidden_size, b.norm, b.norm_eps, param_dtype=pdt)
        self.lm_head = None if b.tie_embeddings else Linear(
            b.hidden_size, b.vocab_size, ("embed", "vocab"), bias=b.lm_head_bias, std=b.init_std,
            dtype=jnp.dtype(b.dtype), param_dtype=pdt, rngs=rngs)

    def embed_tokens(self, ids):
        b = self.cfg.base
        h = jnp.take(self.embed[...], ids, axis=0).astype(jnp.dtype(b.dtype))
        if b.embed_scale != 1.0:
            h = h * b.embed_scale
        return shard(h, ("batch", "length", "act_embed"))

    def head(self, h):
        b = self.cfg.base
        h = self.final_norm(h)
        dt = jnp.dtype(b.dtype)
        logits = jnp.dot(h.astype(dt), self.embed[...].astype(dt).T) if self.lm_head is None else self.lm_head(h)
        logits = logits.astype(jnp.float32)
        if b.logit_scale != 1.0:
            logits = logits * b.logit_scale
        return shard(logits, ("batch", "length", "vocab"))

    @staticmethod
    def positions(ids):
        B, T = ids.shape
        return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))

    def __call__(self, input_ids, *, return_hidden: bool = False):
        """input_ids [B, T] -> logits [B, T, V] float32. return_hidden=True: (logits, per-layer block inputs
        [L, B, T, D], per-layer mixer outputs [L, B, T, D])."""
        pos = self.positions(input_ids)
        h = self.embed_tokens(input_ids)
        ins, mixes = [], []
        for blk in self.layers:
            ins.append(h)
            h, _, m = blk(h, pos)
            mixes.append(m)
        logits = self.head(h)
        return (logits, jnp.stack(ins), jnp.stack(mixes)) if return_hidden else logits

    def mixer_outputs(self, input_ids):
        """Per-layer mixer outputs [L, B, T, D] and mixing matrices [L, B, H, T, T] (attention probabilities for
        attention layers, SSM transfer matrices with D on the diagonal otherwise), plus the logits."""
        pos = self.positions(input_ids)
        h = self.embed_tokens(input_ids)
        outs, mats = [], []
        for blk in self.layers:
            hn = blk.attn_norm(h)
            mats.append(blk.matrix(hn, pos))
            h, _, m = blk(h, pos)
            outs.append(m)
        return self.head(h), jnp.stack(outs), jnp.stack(mats)

    def init_state(self, batch: int):
        """Per-layer recurrent states for an SSM-only model (attention layers have no constant-size state)."""
        if self.cfg.attn_layers:
            raise ConfigError("recurrent decoding of a hybrid model needs a KV cache for its attention layers "
                              f"(attn_layers={self.cfg.attn_layers}); only SSM-only models support init_state")
        return [blk.mixer.init_state(batch) for blk in self.layers]

    def step(self, token_ids, states):
        """One token per row: token_ids [B] -> (logits [B, V], new states). Constant memory per token."""
        h = self.embed_tokens(token_ids[:, None])[:, 0]
        new = []
        for blk, st in zip(self.layers, states):
            hn = blk.attn_norm(h)
            m, st = blk.mixer.step(hn, st)
            if blk.parallel:
                h = h + m + blk.mlp(hn)
            else:
                h = h + m
                h = h + blk.mlp(blk.mlp_norm(h))
            new.append(st)
        return self.head(h[:, None])[:, 0], new


__all__ = ["PhiMambaConfig", "PhiMambaLM", "HybridBlock", "phi_mamba_preset", "PHI_MAMBA_PRESETS"]
