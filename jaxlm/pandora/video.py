"""Pandora's video diffusion model: a small space-time DiT over short clips of frames.

Input: the noisy clip x_t [B, Ta, H, W, 3] with the previous state's last `context_frames` frames concatenated on
channels (each target frame sees all of them: in-channels 3 + 3·Tb, as DynamiCrafter concatenates its condition
frame), the timestep t [B] and a cross-attention memory: the action tokens `ctx` [B, K, context_dim] (the Q-Former
adapter's output, the bag-of-words baseline's, or zeros = the null condition of classifier-free guidance) followed
by the initial frame's tokens (patches of the first context frame, projected to context_dim).

Each block factorises attention in space and time (Ho et al. 2022's video diffusion, Latte's "factorised" DiT):
spatial self-attention inside every frame, temporal self-attention across the frames of every patch position,
cross-attention to the memory, an MLP; adaLN-Zero modulation from the timestep (Peebles & Xie 2023), to which
`action_adaln` adds a projection of the mean action token (a global action pathway next to cross-attention; the
null condition's zeros add nothing). The output
is a v-prediction (Salimans & Ho 2022) of the clip, trained on the zero-terminal-SNR schedule (Lin et al. 2024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ShapeError
from jaxlm.nn.attention import CrossAttention
from jaxlm.nn.linear import Linear, param
from jaxlm.nn.mlp import MLP
from jaxlm.nn.norms import Norm
from jaxlm.nn.time import TimestepEmbedder


def patchify(x, p: int):
    """[B, T, H, W, C] -> [B, T, (H/p)(W/p), p·p·C]."""
    B, T, H, W, C = x.shape
    x = x.reshape(B, T, H // p, p, W // p, p, C).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(B, T, (H // p) * (W // p), p * p * C)


def unpatchify(x, p: int, H: int, W: int, C: int):
    """Inverse of `patchify`."""
    B, T = x.shape[:2]
    x = x.reshape(B, T, H // p, W // p, p, p, C).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(B, T, H, W, C)


def frames_on_channels(frames):
    """[B, Tb, H, W, C] -> [B, 1, H, W, Tb·C]: pixel (h, w) carries every frame's (h, w). (The frames' axis moves
    next to the channels first: a plain reshape puts pixels of other rows and frames at each (h, w), which
    scrambled the condition spatially before 2026-12-02.)"""
    B, Tb, H, W, C = frames.shape
    return frames.transpose(0, 2, 3, 1, 4).reshape(B, 1, H, W, Tb * C)


def _modulate(x, shift, scale):
    return x * (1.0 + scale) + shift


class SpaceTimeBlock(nnx.Module):
    """Spatial attention, temporal attention, cross-attention to the memory and an MLP on x [B, T, N, D]."""

    def __init__(self, dim: int, heads: int, context_dim: int, *, rngs: nnx.Rngs):
        self.norm_s, self.norm_t = Norm(dim, "layer", bias=False), Norm(dim, "layer", bias=False)
        self.norm_c, self.norm_m = Norm(dim, "layer"), Norm(dim, "layer", bias=False)
        self.spatial = CrossAttention(dim, heads, rngs=rngs)
        self.temporal = CrossAttention(dim, heads, rngs=rngs)
        self.cross = CrossAttention(dim, heads, memory_dim=context_dim, rngs=rngs)
        self.mlp = MLP(dim, 4 * dim, "gelu", bias=True, rngs=rngs)
        # adaLN-Zero: shift/scale/gate for the spatial, temporal and MLP branches (gates start at zero)
        self.ada = Linear(dim, 9 * dim, (None, "mlp"), bias=True, rngs=rngs)
        self.ada.kernel[...] = jnp.zeros_like(self.ada.kernel[...])

    def __call__(self, x, temb, memory):
        B, T, N, D = x.shape
        mods = jnp.split(self.ada(jax.nn.silu(temb))[:, None, None, :], 9, axis=-1)
        s_sh, s_sc, s_g, t_sh, t_sc, t_g, m_sh, m_sc, m_g = mods
        h = _modulate(self.norm_s(x), s_sh, s_sc).reshape(B * T, N, D)
        x = x + s_g * self.spatial(h, h).reshape(B, T, N, D)
        h = _modulate(self.norm_t(x), t_sh, t_sc).transpose(0, 2, 1, 3).reshape(B * N, T, D)
        x = x + t_g * self.temporal(h, h).reshape(B, N, T, D).transpose(0, 2, 1, 3)
        x = x + self.cross(self.norm_c(x).reshape(B, T * N, D), memory).reshape(B, T, N, D)
        return x + m_g * self.mlp(_modulate(self.norm_m(x), m_sh, m_sc))


class VideoDiT(nnx.Module):
    """v-prediction model f(x_t, t, cond) -> [B, Ta, H, W, 3]; cond = {"frames": [B, Tb, H, W, 3] (the previous
    state's last frames), "ctx": [B, K, context_dim] (action tokens; zeros = null)}."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        p, S, D = cfg.video_patch, cfg.frame_size, cfg.video_dim
        n, q = (S // p) ** 2, cfg.image_token_patch
        self.patch_in = Linear(p * p * 3 * (1 + cfg.context_frames), D, (None, "embed"), bias=True, rngs=rngs)
        self.pos_space = param(rngs, (n, D), (None, "embed"), 0.02)
        self.pos_time = param(rngs, (cfg.clip_len, D), (None, "embed"), 0.02)
        self.temb = TimestepEmbedder(min(256, 4 * D), D, rngs=rngs)
        if cfg.action_adaln:  # a global action pathway: mean action token -> added to the timestep embedding
            self.action_emb = Linear(cfg.context_dim, D, (None, "embed"), bias=False, rngs=rngs)
        self.frame_tokens = Linear(q * q * 3, cfg.context_dim, (None, "embed"), bias=True, rngs=rngs)
        self.frame_pos = param(rngs, ((S // q) ** 2, cfg.context_dim), (None, "embed"), 0.02)
        self.blocks = nnx.List([SpaceTimeBlock(D, cfg.video_heads, cfg.context_dim, rngs=rngs)
                                for _ in range(cfg.video_depth)])
        self.norm_out = Norm(D, "layer", bias=False)
        self.ada_out = Linear(D, 2 * D, (None, "mlp"), bias=True, rngs=rngs)
        self.out = Linear(D, p * p * 3, ("embed", None), bias=True, rngs=rngs)
        for lin in (self.ada_out, self.out):
            lin.kernel[...] = jnp.zeros_like(lin.kernel[...])

    def memory(self, frames, ctx):
        """The cross-attention memory [B, K + (S/q)², context_dim]: action tokens, then the initial frame's tokens."""
        q = self.cfg.image_token_patch
        first = patchify(frames[:, :1], q)[:, 0]
        return jnp.concatenate([ctx.astype(jnp.float32), self.frame_tokens(first) + self.frame_pos[...]], axis=1)

    def __call__(self, x_t, t, cond):
        cfg = self.cfg
        frames, ctx = cond["frames"], cond["ctx"]
        B, Ta, H, W, C = x_t.shape
        if (Ta, H, W, C) != (cfg.clip_len, cfg.frame_size, cfg.frame_size, 3):
            raise ShapeError(f"VideoDiT: x_t has shape {tuple(x_t.shape)}; expected [B, clip_len={cfg.clip_len}, "
                             f"{cfg.frame_size}, {cfg.frame_size}, 3]")
        p = cfg.video_patch
        ctx_frames = frames_on_channels(frames) * jnp.ones((1, Ta, 1, 1, 1), frames.dtype)
        h = self.patch_in(patchify(jnp.concatenate([x_t, ctx_frames.astype(x_t.dtype)], axis=-1), p))
        h = h + self.pos_space[...][None, None] + self.pos_time[...][None, :, None]
        temb = self.temb(t)
        if cfg.action_adaln:
            temb = temb + self.action_emb(ctx.astype(jnp.float32).mean(axis=1))
        mem = self.memory(frames, ctx)
        for blk in self.blocks:
            h = blk(h, temb, mem)
        sh, sc = jnp.split(self.ada_out(jax.nn.silu(temb))[:, None, None, :], 2, axis=-1)
        return unpatchify(self.out(_modulate(self.norm_out(h), sh, sc)), p, H, W, C)


__all__ = ["VideoDiT", "SpaceTimeBlock", "patchify", "unpatchify", "frames_on_channels"]
