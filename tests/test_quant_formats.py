"""FLUTE formats: NF tables, nearest-value quantization, exact pack/unpack, NFL, bad-input errors."""

import numpy as np
import pytest

import jax.numpy as jnp

from jaxlm.quant.formats import NF2, NF3, NF4, QuantFormat, absmax_scales, make_table, quantize_codes
from jaxlm.quant.nfl import calibrate_scales, layer_output_error
from jaxlm.quant.pack import pack, unpack

GROUPS = (32, 64, 128, 256)


def test_nf_tables():
    for bits, t in ((4, NF4), (3, NF3), (2, NF2)):
        t = np.asarray(t)
        assert t.shape == (2 ** bits,) and np.all(np.diff(t) > 0)
        assert t[0] == -1.0 and t[-1] == 1.0 and 0.0 in t
        # one more positive level than negative ones (NormalFloat asymmetry)
        assert (t > 0).sum() == (t < 0).sum() + 1
    # values of the NormalFloat construction (FLUTE get_values_pivots), computed independently
    np.testing.assert_allclose(NF3, [-1.0, -0.478629, -0.21714172, 0.0, 0.16093014, 0.3379151, 0.56261686, 1.0],
                               atol=2e-6)
    np.testing.assert_allclose(NF2, [-1.0, 0.0, 0.3379151, 1.0], atol=2e-6)


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_pack_unpack_round_trip_exact(bits):
    rng = np.random.default_rng(bits)
    for g in GROUPS:
        q = rng.integers(0, 2 ** bits, size=(2, 2 * 256, 24)).astype(np.uint8)
        p = pack(q, bits, g)
        assert p.dtype == jnp.uint8 and p.shape == (2, 2 * 256 * bits // 8, 24)
        np.testing.assert_array_equal(np.asarray(unpack(p, bits, g)), q)
    # every value in every position (extremes included)
    q = np.tile(np.arange(2 ** bits, dtype=np.uint8), 64)[: 256][:, None].repeat(3, 1)
    np.testing.assert_array_equal(np.asarray(unpack(pack(q, bits, 32), bits, 32)), q)


def test_pack_layout_4bit_planes():
    """The documented layout: in each group, byte j = q[j] | q[G/2 + j] << 4."""
    g = 32
    q = np.random.default_rng(0).integers(0, 16, size=(64, 4)).astype(np.uint8)
    p = np.asarray(pack(q, 4, g))
    for grp in range(2):
        blk, codes = p[grp * 16:(grp + 1) * 16], q[grp * g:(grp + 1) * g]
        np.testing.assert_array_equal(blk, codes[:16] | (codes[16:] << 4))


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_quantize_picks_nearest_table_value(bits):
    rng = np.random.default_rng(10 + bits)
    fmt = QuantFormat.make(bits, 64)
    w = rng.standard_normal((256, 16)).astype(np.float32)
    codes, s = fmt.quantize(w)
    s_full = np.repeat(np.asarray(s), 64, axis=0)
    cand = np.asarray(fmt.table)[None, None, :] * s_full[..., None]  # [K, N, 2**b]
    brute = np.argmin(np.abs(cand - w[..., None]), axis=-1)
    np.testing.assert_array_equal(np.asarray(codes), brute)
    np.testing.assert_allclose(np.asarray(s), np.abs(w).reshape(4, 64, 16).max(1))
    # dequantize = table[code] * scale
    np.testing.assert_allclose(np.asarray(fmt.dequantize(codes, s)), np.take(fmt.table, brute) * s_full, rtol=1e-6)


def test_user_table_any_order():
    t = [0.5, -1.0, 0.0, 1.0]  # unsorted user table of 2**2 values
    fmt = QuantFormat.make(2, 32, t)
    assert fmt.table == (-1.0, 0.0, 0.5, 1.0)
    w = np.array([[-0.9], [-0.4], [0.2], [0.3], [0.74], [0.76], [1.0]] + [[0.0]] * 25, np.float32)
    codes = np.asarray(quantize_codes(w, absmax_scales(w, 32), fmt.table_array, 32))[:7, 0]
    np.testing.assert_array_equal(codes, [0, 1, 1, 2, 2, 3, 3])


def test_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="bits=5"):
        QuantFormat.make(5, 64)
    with pytest.raises(ValueError, match="group_size=48"):
        QuantFormat.make(4, 48)
    with pytest.raises(ValueError, match="group_size=64.*K=96"):
        QuantFormat.make(4, 64).quantize(np.zeros((96, 8), np.float32))
    with pytest.raises(ValueError, match="table has 8 values.*bits=4"):
        make_table(4, np.linspace(-1, 1, 8))
    with pytest.raises(ValueError, match="group_size=64.*K=96"):
        pack(np.zeros((96, 8), np.uint8), 4, 64)
    with pytest.raises(ValueError, match="bits=1"):
        unpack(np.zeros((16, 8), np.uint8), 1, 32)


@pytest.mark.parametrize("bits", [4, 3])
def test_nfl_reduces_layer_output_error(bits):
    rng = np.random.default_rng(bits)
    k, n = 256, 48
    w = (0.02 * rng.standard_normal((k, n))).astype(np.float32)
    # calibration inputs with a few large channels, as in real LLM activations
    x = rng.standard_normal((384, k)).astype(np.float32) * (1 + 6 * (rng.random(k) < 0.05))
    fmt = QuantFormat.make(bits, 64)
    s_nf = absmax_scales(w, 64)
    s_nfl, losses, best = calibrate_scales(w, x, fmt, steps=60, return_history=True)
    e_nf, e_nfl = layer_output_error(w, s_nf, x, fmt), layer_output_error(w, s_nfl, x, fmt)
    np.testing.assert_allclose(float(losses[0]), e_nf, rtol=1e-4)  # step 0 is plain NF
    assert e_nfl < 0.85 * e_nf, (e_nf, e_nfl)
    # the learned scales are stored in the same format: one scale per group, codes re-derived from them
    assert s_nfl.shape == s_nf.shape
    # held-out inputs from the same distribution also improve (not just the calibration set)
    xh = rng.standard_normal((256, k)).astype(np.float32) * (1 + 6 * (np.abs(x).max(0) > 8))
    assert layer_output_error(w, s_nfl, xh, fmt) < layer_output_error(w, s_nf, xh, fmt)
