"""Pure-JAX FLUTE reference: unpack the codes, dequantize (table lookup x per-group scale), then one dot.

This is the path used on CPU and TPU and the ground truth for the Pallas kernel. It has the kernel's signature:

    flute_matmul(x[..., K], packed[K*bits/8, N] uint8, scales[K/G, N], table[2**bits], *, bits, group_size)
        -> y[..., N] in x.dtype,  y = x @ (table[codes] * scales[k // G])

The product accumulates in float32; the dequantized weight is cast to x.dtype first (as the GPU kernel does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.flute.pack import check_bits, check_group_size, unpack


def expand_scales(scales, group_size: int) -> jax.Array:
    """[..., K//G, N] -> [..., K, N] (each group's scale repeated over its G rows)."""
    return jnp.repeat(scales, group_size, axis=-2)


def dequantize(codes, scales, table, group_size: int, dtype=jnp.float32) -> jax.Array:
    """W_hat[..., K, N] = table[codes] * scales[k // G] (computed in float32, returned as `dtype`)."""
    t = jnp.asarray(table, jnp.float32)
    w = jnp.take(t, codes.astype(jnp.int32), axis=0) * expand_scales(jnp.asarray(scales, jnp.float32), group_size)
    return w.astype(dtype)


def check_operands(x, packed, scales, table, bits: int, group_size: int):
    """Validate shapes; returns (K, N). Errors name the operand."""
    check_bits(bits)
    check_group_size(group_size)
    if packed.ndim != 2:
        raise ValueError(f"packed must be 2-D [K*bits/8, N], got shape {packed.shape}")
    k = x.shape[-1]
    if k % group_size:
        raise ValueError(f"group_size={group_size} does not divide the input dimension K={k} of x")
    if packed.shape[0] * 8 != k * bits:
        raise ValueError(f"packed has {packed.shape[0]} rows; x's K={k} at bits={bits} needs {k * bits // 8}")
    n = packed.shape[1]
    if tuple(scales.shape) != (k // group_size, n):
        raise ValueError(f"scales shape {tuple(scales.shape)} != (K/group_size, N) = {(k // group_size, n)}")
    if tuple(table.shape) != (2 ** bits,):
        raise ValueError(f"table has shape {tuple(table.shape)}; bits={bits} needs ({2 ** bits},)")
    return k, n


def flute_matmul(x, packed, scales, table, *, bits: int, group_size: int):
    check_operands(x, packed, scales, table, bits, group_size)
    codes = unpack(packed, bits, group_size)
    w = dequantize(codes, scales, table, group_size, dtype=x.dtype)
    y = jnp.dot(x, w, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


flute_matmul_reference = jax.jit(flute_matmul, static_argnames=("bits", "group_size"))
