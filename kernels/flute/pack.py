"""Offline restructuring of LUT codes into the packed layout read by the FLUTE kernels (kernels/flute), and the
validation of the bit widths / group sizes the kernels support (pure numerics; jaxlm.quant builds on this module).

Input: codes `q[..., K, N]` (uint8, values < 2**bits), kernel orientation [in, out], groups of G rows along K.
Output: `packed[..., K * bits // 8, N]` uint8. Every group of G rows becomes one block of R = G * bits / 8 packed
rows (group g -> packed rows g*R .. g*R+R-1), so the kernel reads one contiguous [R, BN] tile per group and per
output tile, with no interleaving across groups and no in-kernel shuffles.

Inside a group block the codes are stored as bit *planes*. A plane of width w bits holds c = 8 / w codes per byte
and has SB = G / c rows ("sub-blocks"): bits [i*w, (i+1)*w) of plane row j hold the value of group row i*SB + j.
So the kernel extracts sub-block i as `(plane >> (i*w)) & (2**w - 1)`: a contiguous [SB, BN] slab of rows
i*SB .. i*SB+SB-1, which it multiplies with the matching contiguous slice of the activations.

    bits = 4: one 4-bit plane, R = G/2 rows:  byte j = q[j] | q[G/2 + j] << 4
    bits = 2: one 2-bit plane, R = G/4 rows:  byte j = q[j] | q[G/4 + j] << 2 | q[G/2 + j] << 4 | q[3G/4 + j] << 6
    bits = 3: a 2-bit plane of the low two bits (G/4 rows, as for bits = 2) followed by a 1-bit plane of bit 2
              (G/8 rows: bit i of byte j = bit 2 of q[i*G/8 + j]); R = 3G/8 rows. Code = low2 | high1 << 2.

(FLUTE itself packs 4/3/2-bit codes into int16 words along N in an order tied to its CUTLASS tile shapes; the
layout above is our own, chosen so that a Pallas/Triton kernel can slice refs instead of values.)
`pack` and `unpack` are exact inverses for every code array with values below 2**bits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

SUPPORTED_BITS = (2, 3, 4)
SUPPORTED_GROUP_SIZES = (32, 64, 128, 256)


def check_bits(bits) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r} is not supported: expected one of {SUPPORTED_BITS}")
    return int(bits)


def check_group_size(group_size, k: int | None = None) -> int:
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"group_size={group_size!r} is not supported: expected one of {SUPPORTED_GROUP_SIZES}")
    if k is not None and k % group_size:
        raise ValueError(f"group_size={group_size} does not divide the input dimension K={k} of the weight")
    return int(group_size)


def planes(bits: int) -> tuple[int, ...]:
    """Plane widths (bits) stored for a bit width, in storage order."""
    return {4: (4,), 2: (2,), 3: (2, 1)}[check_bits(bits)]


def rows_per_group(bits: int, group_size: int) -> int:
    return group_size * bits // 8


def _pack_plane(v, w: int):
    """v [..., ng, G, N] (values < 2**w) -> [..., ng, G*w/8, N] uint8."""
    *lead, ng, g, n = v.shape
    c = 8 // w
    v = v.astype(jnp.uint8).reshape(*lead, ng, c, g // c, n)
    out = jnp.zeros((*lead, ng, g // c, n), jnp.uint8)
    for i in range(c):
        out = out | (v[..., i, :, :] << jnp.uint8(i * w))
    return out


def _unpack_plane(p, w: int):
    """[..., ng, G*w/8, N] uint8 -> [..., ng, G, N] uint8."""
    *lead, ng, sb, n = p.shape
    c = 8 // w
    mask = jnp.uint8(2 ** w - 1)
    subs = [(p >> jnp.uint8(i * w)) & mask for i in range(c)]
    return jnp.stack(subs, axis=-3).reshape(*lead, ng, c * sb, n)


def pack(codes, bits: int, group_size: int):
    """codes [..., K, N] (uint8, < 2**bits) -> packed [..., K*bits/8, N] uint8 (layout: module docstring)."""
    check_bits(bits)
    codes = jnp.asarray(codes)
    if codes.ndim < 2:
        raise ValueError(f"codes must be at least 2-D [K, N], got shape {codes.shape}")
    check_group_size(group_size, codes.shape[-2])
    return _pack(codes, bits, group_size)


@functools.partial(jax.jit, static_argnames=("bits", "group_size"))
def _pack(codes, bits: int, group_size: int):
    *lead, k, n = codes.shape
    v = codes.astype(jnp.uint8).reshape(*lead, k // group_size, group_size, n)
    if bits == 3:
        blocks = [_pack_plane(v & jnp.uint8(3), 2), _pack_plane((v >> jnp.uint8(2)) & jnp.uint8(1), 1)]
        out = jnp.concatenate(blocks, axis=-2)
    else:
        out = _pack_plane(v, bits)
    return out.reshape(*lead, k * bits // 8, n)


def unpack(packed, bits: int, group_size: int):
    """Inverse of `pack`: packed [..., K*bits/8, N] uint8 -> codes [..., K, N] uint8."""
    check_bits(bits)
    check_group_size(group_size)
    packed = jnp.asarray(packed)
    *lead, r, n = packed.shape
    rg = rows_per_group(bits, group_size)
    if packed.dtype != jnp.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    if r % rg:
        raise ValueError(f"packed has {r} rows, not a multiple of {rg} (= group_size*bits/8 for bits={bits}, "
                         f"group_size={group_size})")
    return _unpack(packed, bits, group_size)


@functools.partial(jax.jit, static_argnames=("bits", "group_size"))
def _unpack(packed, bits: int, group_size: int):
    *lead, r, n = packed.shape
    rg = rows_per_group(bits, group_size)
    p = packed.reshape(*lead, r // rg, rg, n)
    if bits == 3:
        q = group_size // 4
        lo = _unpack_plane(p[..., :q, :], 2)
        hi = _unpack_plane(p[..., q:, :], 1)
        v = lo | (hi << jnp.uint8(2))
    else:
        v = _unpack_plane(p, bits)
    return v.reshape(*lead, (r // rg) * group_size, n)


__all__ = ["SUPPORTED_BITS", "SUPPORTED_GROUP_SIZES", "check_bits", "check_group_size", "planes", "rows_per_group",
           "pack", "unpack"]
