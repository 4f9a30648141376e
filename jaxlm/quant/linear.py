"""QuantLinear: a drop-in replacement for jaxlm.nn.Linear holding LUT-quantized, packed weights.

Same call (`y = layer(x)`, x [..., in] -> [..., out]) and the same orientation as Linear's kernel [in, out].
State (nnx Variables, so the layer splits / merges / scans like any other module, including stacked layers
with a leading 'layers' axis):

    packed  QuantCodes  uint8 [K_pad * bits / 8, out]   codes in the layout of kernels/flute/pack.py
    scales  QuantScales [K_pad / G, out]                per-group scales (absmax, or learned by NFL)
    bias    nnx.Param   [out] (optional, kept in full precision)

Static attributes: bits, group_size, table (2**bits floats), in_features, out_features, dtype, impl.
K_pad is `in_features` rounded up to a multiple of the group size: when G does not divide in_features, the
weight is padded with zero rows (the last group of a column then holds fewer real weights) and x is padded with
zeros at call time, so the result is exactly x @ W_hat over the real rows.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ShapeError
from jaxlm.quant.formats import QuantFormat, absmax_scales, check_group_size, quantize_codes
from jaxlm.quant.pack import pack, unpack


class QuantCodes(nnx.Variable):
    """Packed LUT codes (uint8); not trainable."""


class QuantScales(nnx.Variable):
    """Per-group scales of a LUT-quantized weight (calibrated by NFL, never by the optimizer of a train step)."""


def padded_k(k: int, group_size: int) -> int:
    return -(-k // group_size) * group_size


def pad_rows(w, k_pad: int):
    """w [..., K, N] -> [..., k_pad, N] with zero rows appended."""
    k = w.shape[-2]
    if k_pad == k:
        return w
    pad = [(0, 0)] * w.ndim
    pad[-2] = (0, k_pad - k)
    return jnp.pad(w, pad)


def quantize_weight(w, fmt: QuantFormat, scales=None, scale_dtype=jnp.float32, pad_k: bool = True):
    """w [..., K, N] -> (packed, scales) in storage form. Codes are derived from the *stored* (rounded) scales."""
    w = jnp.asarray(w, jnp.float32)
    k = w.shape[-2]
    if k % fmt.group_size:
        if not pad_k:
            check_group_size(fmt.group_size, k)  # raises, naming group_size and K
        w = pad_rows(w, padded_k(k, fmt.group_size))
    if scales is None:
        scales = absmax_scales(w, fmt.group_size)
    scales = jnp.asarray(scales, jnp.float32).astype(scale_dtype)
    codes = quantize_codes(w, scales.astype(jnp.float32), fmt.table_array, fmt.group_size)
    return pack(codes, fmt.bits, fmt.group_size), scales


class QuantLinear(nnx.Module):
    def __init__(self, packed, scales, *, bits: int, group_size: int, table, in_features: int, bias=None,
                 dtype=jnp.float32, axes=(None, None), impl: str | None = None):
        fmt = QuantFormat.make(bits, group_size, table)
        n = packed.shape[-1]
        k_pad = padded_k(in_features, group_size)
        if packed.shape[-2] != k_pad * bits // 8:
            raise ShapeError(f"packed codes have {packed.shape[-2]} rows; in_features={in_features} at bits={bits}, "
                             f"group_size={group_size} needs {k_pad * bits // 8}")
        if tuple(scales.shape[-2:]) != (k_pad // group_size, n):
            raise ShapeError(f"scales shape {tuple(scales.shape)} does not end in {(k_pad // group_size, n)}")
        self.packed = QuantCodes(packed, axes=tuple(axes))
        self.scales = QuantScales(scales, axes=(None, axes[1]))
        self.bias = None if bias is None else nnx.Param(bias, axes=tuple(axes[1:]))
        self.bits, self.group_size, self.table = fmt.bits, fmt.group_size, fmt.table
        self.in_features, self.out_features = int(in_features), int(n)
        self.dtype = jnp.dtype(dtype).name
        self.impl = impl

    @classmethod
    def from_linear(cls, linear, fmt: QuantFormat, *, scales=None, scale_dtype=None, pad_k: bool = True,
                    impl: str | None = None) -> "QuantLinear":
        """Quantize a jaxlm.nn.Linear (kernel [..., in, out], stacked layers allowed)."""
        kernel = linear.kernel[...]
        axes = tuple(getattr(linear.kernel, "axes", None) or (None, None))
        scale_dtype = jnp.dtype(scale_dtype or linear.dtype)
        packed, s = quantize_weight(kernel, fmt, scales, scale_dtype, pad_k)
        bias = None if linear.bias is None else linear.bias[...]
        return cls(packed, s, bits=fmt.bits, group_size=fmt.group_size, table=fmt.table,
                   in_features=kernel.shape[-2], bias=bias, dtype=linear.dtype, axes=axes, impl=impl)

    @property
    def format(self) -> QuantFormat:
        return QuantFormat(self.bits, self.group_size, self.table)

    def dequantized_kernel(self):
        """W_hat [..., in, out] float32 (padding rows dropped)."""
        codes = unpack(self.packed[...], self.bits, self.group_size)
        w = self.format.dequantize(codes, self.scales[...].astype(jnp.float32))
        return w[..., : self.in_features, :]

    def __call__(self, x):
        from kernels.flute import flute_matmul

        dt = jnp.dtype(self.dtype)
        x = x.astype(dt)
        k_pad = padded_k(self.in_features, self.group_size)
        if k_pad != self.in_features:
            x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, k_pad - self.in_features)])
        y = flute_matmul(x, self.packed[...], self.scales[...], jnp.asarray(self.table, jnp.float32),
                         bits=self.bits, group_size=self.group_size, impl=self.impl)
        if self.bias is not None:
            y = y + self.bias[...].astype(dt)
        return y
