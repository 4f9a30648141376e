"""Channels-last convolution layers for diffusion models: Conv, GroupNorm, Downsample, Upsample, ResBlock.

Inputs are [B, *spatial, C] with any number of spatial axes (1-D signals, [H, W] images, [F, H, W] videos); the
kernel size tuple's length sets it. Parameters carry logical axis names (kernel: spatial axes None, then
in-channels "embed", out-channels "mlp"; biases "mlp"; norm scales "norm"); channel counts the mesh does not
divide are replicated by jaxlm.sharding. ResBlock follows ADM (Dhariwal & Nichol 2021): GroupNorm · SiLU · conv,
a timestep-embedding projection (added, or FiLM scale/shift with use_scale_shift_norm), GroupNorm · SiLU ·
dropout · zero-initialised conv, and a 1×1 skip when the width changes.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ConfigError
from jaxlm.nn.linear import Linear, param


def _tuple(v, n: int, field: str) -> tuple[int, ...]:
    t = (v,) * n if isinstance(v, int) else tuple(v)
    if len(t) != n:
        raise ConfigError(f"{field}={v!r}: expected {n} entries (one per spatial axis)")
    return t


def _kernel(rngs, shape, axes, std: float, dtype, init: str):
    """Like jaxlm.nn.linear.param, but drawn flat and reshaped: on CPU, XLA compiles jax.random.normal for
    3-D+ shapes very slowly (~10 s for (3, 3, 8, 12) vs < 1 s flat); same distribution."""
    if init == "zeros":
        return param(None, shape, axes, dtype=dtype, init="zeros")
    val = std * jax.random.normal(rngs.params(), (math.prod(shape),), jnp.float32).reshape(shape)
    return nnx.Param(val.astype(dtype), axes=tuple(axes))


class Conv(nnx.Module):
    """N-d convolution, kernel [*kernel_size, in, out]; padding "SAME", "VALID", or an int per side (e.g. 1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: Sequence[int] = (3, 3), *, strides=1, padding="SAME",
                 bias: bool = True, std: float | None = None, init: str = "normal",
                 axes: tuple = ("embed", "mlp"), dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        k = tuple(kernel_size)
        if not k or any(d <= 0 for d in k) or in_ch <= 0 or out_ch <= 0:
            raise ConfigError(f"Conv: bad kernel_size={k} / in_ch={in_ch} / out_ch={out_ch}")
        self.strides = _tuple(strides, len(k), "strides")
        if isinstance(padding, int):
            padding = ((padding, padding),) * len(k)
        elif not isinstance(padding, str):  # a tuple of pairs: hashable, so the module's graphdef is a static jit arg
            padding = tuple((int(a), int(b)) for a, b in padding)
        self.padding = padding
        std = 1.0 / math.sqrt(in_ch * math.prod(k)) if std is None else std
        self.kernel = _kernel(rngs, (*k, in_ch, out_ch), (None,) * len(k) + tuple(axes), std, param_dtype, init)
        self.bias = param(None, (out_ch,), axes[1:], dtype=param_dtype, init="zeros") if bias else None
        self.dtype = dtype

    def __call__(self, x):
        nd = self.kernel.ndim - 2
        if x.ndim != nd + 2:
            raise ConfigError(f"Conv with a {nd}-d kernel expects [B, *{nd} spatial, C], got shape {x.shape}")
        spatial = "".join("DHW"[-nd:] if nd <= 3 else [chr(ord("a") + i) for i in range(nd)])
        dn = jax.lax.conv_dimension_numbers(x.shape, self.kernel.shape,
                                            (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.strides,
                                         self.padding, dimension_numbers=dn)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class GroupNorm(nnx.Module):
    """Group normalisation over (spatial axes, channels within a group), statistics in float32."""

    def __init__(self, channels: int, num_groups: int = 32, eps: float = 1e-5, *, affine: bool = True,
                 param_dtype=jnp.float32):
        if channels % num_groups:
            raise ConfigError(f"GroupNorm: num_groups={num_groups} does not divide channels={channels}")
        self.num_groups, self.eps = num_groups, eps
        self.scale = param(None, (channels,), ("norm",), dtype=param_dtype, init="ones") if affine else None
        self.bias = param(None, (channels,), ("norm",), dtype=param_dtype, init="zeros") if affine else None

    def __call__(self, x):
        b, c = x.shape[0], x.shape[-1]
        h = x.astype(jnp.float32).reshape(b, -1, self.num_groups, c // self.num_groups)
        mu = jnp.mean(h, axis=(1, 3), keepdims=True)
        var = jnp.mean(jnp.square(h - mu), axis=(1, 3), keepdims=True)
        h = ((h - mu) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        if self.scale is not None:
            h = h * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return h.astype(x.dtype)


class Downsample(nnx.Module):
    """Reduce each spatial axis by its factor (1 keeps it, e.g. (1, 2, 2) for video time): a strided 3-wide
    conv with padding 1 (ADM), or average pooling when use_conv=False."""

    def __init__(self, channels: int, factors: Sequence[int] = (2, 2), *, use_conv: bool = True,
                 out_ch: int | None = None, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.factors = tuple(factors)
        out_ch = channels if out_ch is None else out_ch
        if not use_conv and out_ch != channels:
            raise ConfigError(f"Downsample: out_ch={out_ch} != channels={channels} needs use_conv=True")
        k = tuple(3 if f > 1 else 1 for f in self.factors)
        self.conv = (Conv(channels, out_ch, k, strides=self.factors, padding=tuple((d // 2, d // 2) for d in k),
                          dtype=dtype, param_dtype=param_dtype, rngs=rngs) if use_conv else None)

    def __call__(self, x):
        if self.conv is not None:
            return self.conv(x)
        win = (1,) + self.factors + (1,)
        s = jax.lax.reduce_window(x.astype(jnp.float32), 0.0, jax.lax.add, win, win, "VALID")
        return (s / math.prod(self.factors)).astype(x.dtype)


class Upsample(nnx.Module):
    """Nearest-neighbour upsampling by `factors` per spatial axis, then (optionally) a 3-wide conv (ADM)."""

    def __init__(self, channels: int, factors: Sequence[int] = (2, 2), *, use_conv: bool = True,
                 out_ch: int | None = None, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.factors = tuple(factors)
        out_ch = channels if out_ch is None else out_ch
        if not use_conv and out_ch != channels:
            raise ConfigError(f"Upsample: out_ch={out_ch} != channels={channels} needs use_conv=True")
        self.conv = (Conv(channels, out_ch, (3,) * len(self.factors), dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs) if use_conv else None)

    def __call__(self, x):
        for ax, f in enumerate(self.factors, start=1):
            if f > 1:
                x = jnp.repeat(x, f, axis=ax)
        return self.conv(x) if self.conv is not None else x


class ResBlock(nnx.Module):
    """ADM residual block over [B, *spatial, C] with an optional timestep embedding temb [B, temb_dim]."""

    def __init__(self, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None, *,
                 kernel_size: Sequence[int] = (3, 3), num_groups: int = 32, dropout: float = 0.0,
                 use_scale_shift_norm: bool = False, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        out_ch = in_ch if out_ch is None else out_ch
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.use_scale_shift_norm = use_scale_shift_norm
        self.norm1 = GroupNorm(in_ch, num_groups, param_dtype=param_dtype)
        self.conv1 = Conv(in_ch, out_ch, kernel_size, **kw)
        self.temb = (Linear(temb_dim, out_ch * (2 if use_scale_shift_norm else 1), (None, "mlp"), bias=True, **kw)
                     if temb_dim else None)
        self.norm2 = GroupNorm(out_ch, num_groups, param_dtype=param_dtype)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.conv2 = Conv(out_ch, out_ch, kernel_size, init="zeros", **kw)
        self.skip = Conv(in_ch, out_ch, (1,) * len(tuple(kernel_size)), **kw) if in_ch != out_ch else None

    def __call__(self, x, temb=None, *, deterministic: bool = True):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.temb is not None:
            if temb is None:
                raise ConfigError("ResBlock built with temb_dim needs a timestep embedding temb [B, temb_dim]")
            e = self.temb(jax.nn.silu(temb)).reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (-1,))
            if self.use_scale_shift_norm:
                scale, shift = jnp.split(e, 2, axis=-1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + e)
        else:
            h = self.norm2(h)
        h = jax.nn.silu(h)
        if self.dropout is not None:
            h = self.dropout(h, deterministic=deterministic)
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h
