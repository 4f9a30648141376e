"""FLUTE-style lookup-table matmul as a Pallas GPU kernel (Triton lowering; runs on CPU in interpret mode).

    y[M, N] = x[M, K] @ (table[codes] * scales[k // G])        (packed layout: kernels/flute/pack.py)

Design (see docs/flute.md and shared/reference/flute_pallas.md):
- Grid (M / BM, N / BN, split_k). Each program owns a [BM, BN] output tile and a contiguous range of K groups;
  it loops over its groups with `lax.fori_loop`. split_k > 1 writes float32 partial sums [split_k, M, N] that XLA
  adds up (the work-balance alternative to FLUTE's Stream-K: at decode, N / BN alone gives too few programs).
- Per group, the packed [R, BN] uint8 tile is read by *ref slices* (`pl.ds`), one per sub-block of the bit
  planes; codes are extracted with shifts and masks (no value slicing, no in-kernel interleave).
- The table lookup is a gather-load from the table *ref* (`table_ref[codes]`: a pointer gather that stays in
  L1); `jnp.take` on a value would not lower in Pallas Triton. For 4 bits with 16-bit activations a paired table
  (FLUTE's "vectorized LUT") is used: one 32-bit load returns the two bf16/f16 values of a packed byte.
- Scales are applied after each group's dot: acc += (x_g @ table[q_g]) * s[g]: one multiply per output per group
  instead of one per weight.
- M is padded to a power of two >= 16 (Triton's dot needs >= 16 per dimension); BN is a power of two.
  Sub-blocks narrower than 16 rows (2 bits at G=32, 3 bits at G<=64) use a broadcast-multiply-reduce instead
  of a dot.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.flute.reference import check_operands


def _pow2_divisor(n: int, cap: int) -> int:
    b = 1
    while b * 2 <= cap and n % (b * 2) == 0:
        b *= 2
    return b


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def sub_blocks(bits: int, group_size: int):
    """Static description of one group's sub-blocks: list of (k_offset, size, [(row, shift, mask, code_shift)])."""
    g = group_size
    if bits == 4:
        sb = g // 2
        return [(i * sb, sb, [(0, 4 * i, 0xF, 0)]) for i in range(2)]
    if bits == 2:
        sb = g // 4
        return [(i * sb, sb, [(0, 2 * i, 0x3, 0)]) for i in range(4)]
    sb = g // 8  # bits == 3: 2-bit plane (G/4 rows) then 1-bit plane (G/8 rows)
    return [(i * sb, sb, [((i % 2) * sb, 2 * (i // 2), 0x3, 0), (g // 4, i, 0x1, 2)]) for i in range(8)]


def pair_table(table, dtype=jnp.bfloat16) -> jax.Array:
    """[256] uint32: entry b holds (table[b & 15], table[b >> 4]) as two bf16 bit patterns (low half, high half)."""
    t16 = jnp.asarray(table, jnp.float32).astype(dtype)
    u = jax.lax.bitcast_convert_type(t16, jnp.uint16).astype(jnp.uint32)
    idx = jnp.arange(256)
    return u[idx & 15] | (u[idx >> 4] << 16)


def _partial_dot(xs, w):
    """xs [BM, S], w [S, BN] -> [BM, BN] float32."""
    if xs.shape[1] >= 16:
        return jnp.dot(xs, w, preferred_element_type=jnp.float32)
    prod = xs.astype(jnp.float32)[:, :, None] * w.astype(jnp.float32)[None, :, :]
    return jnp.sum(prod, axis=1)


def _kernel(x_ref, p_ref, s_ref, t_ref, o_ref, *, bits, group_size, groups_per_split, paired, cdtype):
    rows = group_size * bits // 8
    split = pl.program_id(2)
    bm, bn = o_ref.shape[-2], o_ref.shape[-1]
    blocks = sub_blocks(bits, group_size)

    def group_body(gi, acc):
        g = split * groups_per_split + gi
        k0 = g * group_size
        r0 = g * rows
        part = jnp.zeros((bm, bn), jnp.float32)
        if paired:  # bits == 4, 16-bit compute: one 32-bit load gives both nibbles' values
            sb = group_size // 2
            byte = p_ref[pl.ds(r0, sb), :].astype(jnp.int32)
            pair = t_ref[byte]  # [sb, BN] uint32
            lo = jax.lax.bitcast_convert_type(pair << 16, jnp.float32).astype(cdtype)
            hi = jax.lax.bitcast_convert_type(pair & jnp.uint32(0xFFFF0000), jnp.float32).astype(cdtype)
            part += _partial_dot(x_ref[:, pl.ds(k0, sb)], lo)
            part += _partial_dot(x_ref[:, pl.ds(k0 + sb, sb)], hi)
        else:
            slabs = {}  # each packed slab is loaded once per group and shared by the sub-blocks it holds
            for koff, size, fields in blocks:
                code = None
                for row, shift, mask, cshift in fields:
                    if (row, size) not in slabs:
                        slabs[(row, size)] = p_ref[pl.ds(r0 + row, size), :].astype(jnp.int32)
                    v = slabs[(row, size)]
                    v = (v >> shift) & mask if shift else v & mask
                    v = v << cshift if cshift else v
                    code = v if code is None else code | v
                w = t_ref[code].astype(cdtype)  # gather-load from the table ref
                part += _partial_dot(x_ref[:, pl.ds(k0 + koff, size)], w)
        scale = s_ref[pl.ds(g, 1), :].astype(jnp.float32)  # [1, BN]
        return acc + part * scale

    acc = jax.lax.fori_loop(0, groups_per_split, group_body, jnp.zeros((bm, bn), jnp.float32))
    o_ref[...] = acc[None] if o_ref.ndim == 3 else acc


def flute_matmul(x, packed, scales, table, *, bits: int, group_size: int, block_n: int = 128, block_m: int = 0,
                 split_k: int = 0, num_warps: int = 4, num_stages: int = 3, interpret: bool = False,
                 paired: bool | None = None):
    """Pallas FLUTE matmul; same contract as kernels.flute.reference.flute_matmul.

    block_n: the largest power of two <= block_n dividing N is used. block_m: 0 = next power of two >= M (at least
    16, at most 64). split_k: 0 = automatic (enough programs to fill a GPU at decode). paired: None = use the
    paired 4-bit table when x is bf16.
    """
    k, n = check_operands(x, packed, scales, table, bits, group_size)
    if n % 16:
        raise ValueError(f"the Pallas FLUTE kernel needs N % 16 == 0, got N={n} (use the reference)")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    bm = block_m or min(64, max(16, _next_pow2(m)))
    mp = -(-m // bm) * bm
    if mp != m:
        x2 = jnp.pad(x2, ((0, mp - m), (0, 0)))
    bn = _pow2_divisor(n, block_n)
    if bn < 16:
        raise ValueError(f"N={n} has no power-of-two tile >= 16 below block_n={block_n}")
    ng = k // group_size
    programs = (mp // bm) * (n // bn)
    if not split_k:  # aim for >= 256 programs (2 per SM on an H100/H200), with >= 4 groups per program
        split_k = 1
        while programs * split_k < 256 and ng % (split_k * 2) == 0 and ng // (split_k * 2) >= 4:
            split_k *= 2
    if ng % split_k:
        raise ValueError(f"split_k={split_k} does not divide the number of groups K/group_size={ng}")
    if paired is None:
        paired = bits == 4 and jnp.dtype(x.dtype) == jnp.dtype(jnp.bfloat16)
    if paired and bits != 4:
        raise ValueError(f"paired=True needs bits=4, got bits={bits}")
    y = _padded_call(x2, packed, scales, jnp.asarray(table, jnp.float32), bits=bits, group_size=group_size,
                     bm=bm, bn=bn, split_k=split_k, num_warps=num_warps, num_stages=num_stages,
                     interpret=interpret, paired=bool(paired))
    return y[:m].reshape(*lead, n)


@functools.partial(jax.jit, static_argnames=("bits", "group_size", "bm", "bn", "split_k", "num_warps",
                                             "num_stages", "interpret", "paired"))
def _padded_call(x2, packed, scales, table, *, bits, group_size, bm, bn, split_k, num_warps, num_stages,
                 interpret, paired):
    mp, k = x2.shape
    n = packed.shape[1]
    ng = k // group_size
    cdtype = x2.dtype
    # the paired table holds bf16 bit patterns (exact for bf16 compute; bf16-rounded table values otherwise)
    tbl = pair_table(table, jnp.bfloat16) if paired else table
    kernel = functools.partial(_kernel, bits=bits, group_size=group_size, groups_per_split=ng // split_k,
                               paired=paired, cdtype=cdtype)
    kwargs = {}
    if not interpret:
        from jax.experimental.pallas import triton as pltriton
        kwargs["compiler_params"] = pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((split_k, mp, n), jnp.float32),
        grid=(mp // bm, n // bn, split_k),
        in_specs=[
            pl.BlockSpec((bm, k), lambda i, j, s: (i, 0)),
            pl.BlockSpec((packed.shape[0], bn), lambda i, j, s: (0, j)),
            pl.BlockSpec((ng, bn), lambda i, j, s: (0, j)),
            pl.BlockSpec(tuple(tbl.shape), lambda i, j, s: (0,)),
        ],
        out_specs=pl.BlockSpec((1, bm, bn), lambda i, j, s: (s, i, j)),
        interpret=interpret,
        **kwargs,
    )(x2, packed, scales, tbl)
    y = out[0] if split_k == 1 else jnp.sum(out, axis=0)
    return y.astype(cdtype)


def lower_for_gpu(fn, *args, device_kind: str = "NVIDIA H100 80GB HBM3", num_cores: int = 132):
    """Lower `jax.jit(fn)` for CUDA on a machine without a GPU (runs the real Pallas -> Triton lowering).

    `args` are jax.ShapeDtypeStruct. Returns the lowered object; raises whatever the lowering raises for an op
    Pallas cannot lower on GPU. ptxas / Triton's own compiler do not run, so register or shared-memory limits
    are not checked.
    """
    from jax.sharding import AbstractMesh

    try:
        from jax.sharding import AbstractDevice
    except ImportError:  # pragma: no cover - older layouts
        from jax._src.mesh import AbstractDevice  # type: ignore
    mesh = AbstractMesh((), (), abstract_device=AbstractDevice(device_kind=device_kind, platform="gpu",
                                                               num_cores=num_cores))
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


def cross_lower(x_shape, k: int, n: int, *, bits: int, group_size: int, dtype=jnp.bfloat16, **kw):
    """Lower the FLUTE kernel for an H100 on this (CPU) machine; see `lower_for_gpu`."""
    args = (jax.ShapeDtypeStruct(tuple(x_shape) + (k,), dtype),
            jax.ShapeDtypeStruct((k * bits // 8, n), jnp.uint8),
            jax.ShapeDtypeStruct((k // group_size, n), dtype),
            jax.ShapeDtypeStruct((2 ** bits,), jnp.float32))
    fn = functools.partial(flute_matmul, bits=bits, group_size=group_size, interpret=False, **kw)
    return lower_for_gpu(fn, *args)


__all__ = ["flute_matmul", "cross_lower", "lower_for_gpu", "pair_table", "sub_blocks"]
