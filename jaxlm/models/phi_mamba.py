"""Phi-Mamba and Hybrid Phi-Mamba (MOHAWK, goombalab/phi-mamba), and more generally any `DecoderConfig` block
structure with discrete Mamba-2 mixers in place of attention.

The block structure (norm kind, parallel vs sequential block, MLP kind, biases, embeddings, head) comes from a
`DecoderConfig`, so the same class is Phi-Mamba (Phi-1.5's parallel block: one LayerNorm feeding mixer and MLP) and
the MOHAWK recipe's SmolLM2 student (sequential RMSNorm/SwiGLU blocks). Layers listed in `attn_layers` keep a
`jaxlm.nn.Attention` mixer (Hybrid Phi-Mamba); all others use `DiscreteMamba2Mixer`.

Layers are held in a Python list (the layer kinds differ in the hybrid), so a forward unrolls over layers.

`original_mixer_init` re-initialises a mixer as goombalab/mohawk's `DiscreteMamba2` with the Phi-1.5 configs'
initializer `{z: identity, convolution: identity, out: default, rest: default}` (components/cores/discrete_mamba2.py,
utils/init_weights.py). Decoding: `init_state(batch, max_len)` / `step` carry the SSM state of every Mamba layer and a
KV cache of `max_len` slots for every attention layer of a hybrid.
"""

from __future__ import annotations

import math

import jax
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


# silu(Z_BIAS) = 1: the original's "z: identity" gate bias (discrete_mamba2.py `init_z`), so the gate starts open
Z_BIAS = 1.278464542761
# the original Mixer calls `_init_weights(n_layer=24)` whatever the model's depth (hard-coded in Mixer.__init__)
ORIGINAL_N_LAYER = 24


def _torch_uniform(key, shape, fan_in: int, dtype):
    """torch's default nn.Linear weight init, kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def original_mixer_init(mixer: DiscreteMamba2Mixer, key, n_layer: int = ORIGINAL_N_LAYER):
    """Initialise `mixer` as goombalab/mohawk's DiscreteMamba2 with the Phi-1.5 configs' initializer:
    in_proj with torch's default uniform init (its biases, if any, zero), then its z rows zero and z_bias =
    1.278464542761 (the gate silu(z + z_bias) is exactly 1 for every input: "z: identity"); out_proj
    kaiming_uniform(a=sqrt(5)) / sqrt(n_layer) (`_init_weights`' rescale_prenorm_residual with
    n_residuals_per_layer=1, n_layer=24 as hard-coded by the original); conv the identity (last tap 1, bias 0:
    "convolution: identity"); D ones."""
    k_in, k_out = jax.random.split(key)
    d_model, n_in = mixer.in_proj.kernel[...].shape
    w = _torch_uniform(k_in, (d_model, n_in), d_model, mixer.in_proj.kernel[...].dtype)
    z0 = mixer.conv_dim
    mixer.in_proj.kernel[...] = w.at[:, z0:z0 + mixer.d_inner].set(0)
    if mixer.in_proj.bias is not None:
        mixer.in_proj.bias[...] = jnp.zeros_like(mixer.in_proj.bias[...])
    mixer.z_bias[...] = jnp.full_like(mixer.z_bias[...], Z_BIAS)
    shape = mixer.out_proj.kernel[...].shape
    mixer.out_proj.kernel[...] = (_torch_uniform(k_out, shape, shape[0], jnp.float32)
                                  / math.sqrt(n_layer)).astype(mixer.out_proj.kernel[...].dtype)
    if mixer.out_proj.bias is not None:
        mixer.out_proj.bias[...] = jnp.zeros_like(mixer.out_proj.bias[...])
    mixer.D[...] = jnp.ones_like(mixer.D[...])
    mixer.set_identity_conv()


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

    def init_state(self, batch: int, max_len: int | None = None):
        """Per-layer decode states: (conv_state, ssm_state) for a Mamba layer (constant size); for an attention layer
        of a hybrid a KV cache (k, v) of `max_len` slots [B, max_len, KV, D] (max_len is then required). Every row
        starts at position 0 (prompts of equal length: an SSM state has no per-row padding mask)."""
        if self.cfg.attn_layers and max_len is None:
            raise ConfigError("decoding a hybrid model needs a KV cache for its attention layers "
                              f"(attn_layers={self.cfg.attn_layers}): pass init_state(batch, max_len=...)")
        b = self.cfg.base
        states = []
        for blk in self.layers:
            if blk.is_attention:
                kv = jnp.zeros((batch, int(max_len), b.num_kv_heads, b.head_dim), jnp.dtype(b.dtype))
                states.append((kv, kv))
            else:
                states.append(blk.mixer.init_state(batch))
        return {"layers": states, "lengths": jnp.zeros((batch,), jnp.int32)} if self.cfg.attn_layers else states

    def step(self, token_ids, states):
        """One token per row: token_ids [B] -> (logits [B, V], new states). Mamba layers update their recurrent
        state (constant memory); attention layers of a hybrid write slot `lengths` of their KV cache and attend to
        the slots before it."""
        hybrid = isinstance(states, dict)
        layer_states = states["layers"] if hybrid else states
        lengths = states["lengths"] if hybrid else None
        h = self.embed_tokens(token_ids[:, None])[:, 0]
        new = []
        for blk, st in zip(self.layers, layer_states):
            hn = blk.attn_norm(h)
            if blk.is_attention:
                m, st = blk.attn(hn[:, None], lengths[:, None], kv_cache=st, lengths=lengths)
                m = m[:, 0]
            else:
                m, st = blk.mixer.step(hn, st)
            if blk.parallel:
                h = h + m + blk.mlp(hn)
            else:
                h = h + m
                h = h + blk.mlp(blk.mlp_norm(h))
            new.append(st)
        logits = self.head(h[:, None])[:, 0]
        return logits, ({"layers": new, "lengths": lengths + 1} if hybrid else new)


__all__ = ["PhiMambaConfig", "PhiMambaLM", "HybridBlock", "original_mixer_init", "Z_BIAS", "phi_mamba_preset", "PHI_MAMBA_PRESETS"]
