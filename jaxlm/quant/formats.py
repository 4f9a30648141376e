"""Lookup-table (LUT) weight formats: NormalFloat tables, per-group absmax scales, nearest-value quantization.

Conventions (kernel orientation, as in `jaxlm.nn.Linear`): a weight is `W[K, N]` = [in_features, out_features].
Groups run along K (the input dimension): group `g` holds rows `g*G .. g*G+G-1` of one column, so the scales have
shape `[K // G, N]` and the dequantized weight is

    W_hat[k, n] = table[codes[k, n]] * scales[k // G, n]

`codes` are integers in [0, 2**bits). Quantization picks, for each weight, the table value nearest to
`W / scale` (ties go to the larger value), exactly as FLUTE's `searchsorted(pivots, W / s)` with pivots at the
midpoints of the sorted table.

Tables: NF4 is the QLoRA / bitsandbytes table; NF3 and NF2 come from the same NormalFloat construction
(quantiles of N(0, 1) with offset delta = (1/32 + 1/30) / 2, normalised to [-1, 1], zero exactly representable).
Any user table of 2**bits distinct finite values (sorted or not) is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import CheckpointError, ConfigError
from kernels.flute import pack as _kpack
from kernels.flute.pack import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES
from kernels.flute.reference import dequantize, expand_scales


# QLoRA / bitsandbytes NF4 (identical to FLUTE's hard-coded table).
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)

_NF_DELTA = 0.5 * (1.0 / 32.0 + 1.0 / 30.0)


def _ndtri(p):
    from statistics import NormalDist
    nd = NormalDist()
    return np.array([nd.inv_cdf(float(v)) for v in np.asarray(p, np.float64)], np.float64)


def check_bits(bits) -> int:
    """kernels.flute.pack.check_bits, raising jaxlm's ConfigError (the kernels package imports nothing from jaxlm)."""
    try:
        return _kpack.check_bits(bits)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_group_size(group_size, k: int | None = None) -> int:
    """kernels.flute.pack.check_group_size, raising jaxlm's ConfigError (names group_size and K)."""
    try:
        return _kpack.check_group_size(group_size, k)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def normal_float_table(bits: int) -> tuple[float, ...]:
    """The NormalFloat table with 2**bits levels (asymmetric: one more positive level than negative ones)."""
    check_bits(bits)
    if bits == 4:
        return NF4
    half = 2 ** (bits - 1)
    neg = -_ndtri(np.linspace(1.0 - _NF_DELTA, 0.5, half))  # -1 .. 0 (includes 0)
    pos = _ndtri(np.linspace(0.5, 1.0 - _NF_DELTA, half + 1)[1:])
    v = np.concatenate([neg, pos])
    v = v / np.abs(v).max()
    return tuple(float(np.float32(t)) + 0.0 for t in v)


NF3 = normal_float_table(3)
NF2 = normal_float_table(2)


def make_table(bits: int, table=None) -> np.ndarray:
    """The sorted float32 table for `bits`: NormalFloat by default, or a user table of 2**bits values."""
    check_bits(bits)
    if table is None or (isinstance(table, str) and table.lower() in ("nf", f"nf{bits}")):
        return np.asarray(normal_float_table(bits), np.float32)
    if isinstance(table, str):
        raise ConfigError(f"table={table!r}: expected 'nf', 'nf{bits}' or a sequence of {2 ** bits} floats")
    t = np.asarray(table, np.float64).reshape(-1)
    if t.size != 2 ** bits:
        raise ConfigError(f"table has {t.size} values but bits={bits} needs exactly {2 ** bits}")
    if not np.all(np.isfinite(t)):
        raise ConfigError("table holds non-finite values")
    t = np.sort(t).astype(np.float32)
    if np.any(np.diff(t) <= 0):
        raise ConfigError(f"table values must be distinct (after float32 rounding): {t.tolist()}")
    return t


def pivots(table) -> jax.Array:
    """Decision boundaries between neighbouring sorted table values (their midpoints)."""
    t = jnp.asarray(table, jnp.float32)
    return (t[1:] + t[:-1]) * 0.5


def absmax_scales(w, group_size: int) -> jax.Array:
    """Per-group absmax of `w[..., K, N]` over groups of `group_size` rows: [..., K // G, N] float32.

    All-zero groups get scale 1 (any scale reproduces them exactly; 1 avoids a division by zero).
    """
    w = jnp.asarray(w, jnp.float32)
    *lead, k, n = w.shape
    check_group_size(group_size, k)
    s = jnp.max(jnp.abs(w.reshape(*lead, k // group_size, group_size, n)), axis=-2)
    return jnp.where(s > 0, s, 1.0)


def quantize_codes(w, scales, table, group_size: int) -> jax.Array:
    """Nearest-table-value codes (uint8, [..., K, N]) of `w / scale` for the given per-group scales."""
    w = jnp.asarray(w, jnp.float32)
    u = w / expand_scales(jnp.asarray(scales, jnp.float32), group_size)
    p = pivots(table)
    # count of pivots strictly below u == searchsorted(p, u, side='left'): ties go to the larger value
    codes = jnp.sum(u[..., None] > p, axis=-1) if p.shape[0] <= 16 else jnp.searchsorted(p, u, side="left")
    return codes.astype(jnp.uint8)


@dataclass(frozen=True)
class QuantFormat:
    """What a quantized weight means: bits, group size along K and the 2**bits table."""

    bits: int
    group_size: int
    table: tuple[float, ...]

    @classmethod
    def make(cls, bits: int = 4, group_size: int = 128, table=None) -> "QuantFormat":
        check_bits(bits)
        check_group_size(group_size)
        return cls(int(bits), int(group_size), tuple(float(v) for v in make_table(bits, table)))

    @property
    def table_array(self) -> np.ndarray:
        return np.asarray(self.table, np.float32)

    def to_json(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "table": list(self.table)}

    @classmethod
    def from_json(cls, d: dict) -> "QuantFormat":
        for key in ("bits", "group_size", "table"):
            if key not in d:
                raise CheckpointError(f"quantization format is missing the key {key!r}: {d}")
        return cls.make(d["bits"], d["group_size"], d["table"])

    def quantize(self, w, scales=None):
        """w [..., K, N] -> (codes uint8 [..., K, N], scales float32 [..., K//G, N]); absmax scales by default."""
        w = jnp.asarray(w, jnp.float32)
        check_group_size(self.group_size, w.shape[-2])
        if scales is None:
            scales = absmax_scales(w, self.group_size)
        return quantize_codes(w, scales, self.table_array, self.group_size), jnp.asarray(scales, jnp.float32)

    def dequantize(self, codes, scales, dtype=jnp.float32):
        return dequantize(codes, scales, self.table_array, self.group_size, dtype)

    def bytes_per_weight(self, scale_bytes: int = 2) -> float:
        return self.bits / 8 + scale_bytes / self.group_size


def round_trip_error(w, fmt: QuantFormat) -> float:
    """Relative Frobenius error of quantize -> dequantize (diagnostics)."""
    codes, s = fmt.quantize(w)
    w = jnp.asarray(w, jnp.float32)
    return float(jnp.linalg.norm(fmt.dequantize(codes, s) - w) / jnp.maximum(jnp.linalg.norm(w), 1e-30))


__all__ = ["NF4", "NF3", "NF2", "SUPPORTED_BITS", "SUPPORTED_GROUP_SIZES", "QuantFormat", "normal_float_table",
           "make_table", "pivots", "absmax_scales", "expand_scales", "quantize_codes", "dequantize",
           "check_bits", "check_group_size", "round_trip_error"]
