"""Phi-Mamba and Hybrid Phi-Mamba (MOHAWK, goombalab/phi-mamba), and more generally any `DecoderConfig` block
structure with discrete Mamba-2 mixers in place of attention.

The block structure (norm kind, parallel vs sequential block, MLP kind, biases, embeddings, head) comes from a
`DecoderConfig`, so the same class is Phi-Mamba (Phi-1.5's parallel block: one LayerNorm feeding mixer and MLP) and
the MOHAWK recipe's SmolLM2 student (sequential RMSNorm/SwiGLU blocks). Layers listed in `attn_layers` keep a
`jaxlm.nn.Attention` mixer (Hybrid Phi-Mamba); all others use `DiscreteMamba2Mixer`.

Layers are held in a Python list (the layer kinds differ in the hybrid), so a forward unrolls over layers.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxlm.config import PHI_MAMBA_PRESETS, PhiMambaConfig, phi_mamba_preset  # noqa: F401  (re-exported)
from jaxlm.errors import ConfigError
from jaxlm.models.shell import LMShell, ShellConfig, sequence_positions
from jaxlm.nn import MLP, Attention, Norm
from jaxlm.nn.ssd import DiscreteMamba2Mixer
from jaxlm.sharding import shard


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


class PhiMambaLM(LMShell):
    def __init__(self, cfg: PhiMambaConfig, *, rngs: nnx.Rngs = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.cfg = cfg
        self.init_embedding(ShellConfig.of(cfg), rngs)
        attn = set(int(i) for i in cfg.attn_layers)
        self.layers = nnx.List([HybridBlock(cfg, i in attn, rngs=rngs) for i in range(cfg.num_layers)])
        self.init_head(rngs)

    @staticmethod
    def positions(x):
        """arange(T) positions [B, T] for ids [B, T] or embeddings [B, T, D]."""
        return sequence_positions(x.shape[0], x.shape[1])

    def __call__(self, input_ids=None, *, embeds=None, prefix_embeds=None, return_hidden: bool = False):
        """input_ids [B, T] (or embeds [B, T, D]; prefix_embeds [B, P, D] go first) -> logits [B, P + T, V]
        float32. return_hidden=True: (logits, per-layer block inputs [L, B, T, D], per-layer mixer outputs
        [L, B, T, D])."""
        h = self.embed_inputs(input_ids, embeds, prefix_embeds)
        pos = self.positions(h)
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
