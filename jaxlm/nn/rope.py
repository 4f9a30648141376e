"""Rotary position embeddings: full or partial (first `rotary_dim` channels), half (NeoX) or interleaved (GPT-J)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxlm.errors import ConfigError


def rope_angles(positions, rotary_dim: int, theta: float):
    """positions [..., T] -> (cos, sin) each [..., T, rotary_dim // 2], float32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x, cos, sin, rotary_dim: int, style: str = "half"):
    """x [B, T, H, D]; cos/sin [B, T, rotary_dim//2]. Channels >= rotary_dim pass through unchanged."""
    dtype = x.dtype
    rot, rest = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    if style == "half":
        x1, x2 = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2:]
        out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    elif style == "interleaved":
        xe, xo = rot[..., 0::2], rot[..., 1::2]
        out = jnp.stack([xe * c - xo * s, xo * c + xe * s], axis=-1).reshape(rot.shape)
    else:
        raise ConfigError(f"rope_style={style!r}: expected 'half' or 'interleaved'")
    return jnp.concatenate([out.astype(dtype), rest], axis=-1) if rest.shape[-1] else out.astype(dtype)
