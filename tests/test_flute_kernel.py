"""FLUTE kernels: Pallas (interpret mode) vs the pure-JAX reference; CUDA cross-lowering on CPU; dispatcher."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import kernels.flute as flute
from jaxlm.quant.formats import QuantFormat
from jaxlm.quant.pack import pack, unpack
from kernels.flute import pallas as fp
from kernels.flute import reference as fr


def _operands(bits, g, m, k, n, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    fmt = QuantFormat.make(bits, g)
    codes, s = fmt.quantize(rng.standard_normal((k, n)).astype(np.float32))
    x = jnp.asarray(rng.standard_normal((m, k)), dtype)
    return x, pack(codes, bits, g), s, jnp.asarray(fmt.table_array), codes


def test_reference_is_dequantize_then_dot():
    x, p, s, t, codes = _operands(3, 32, 5, 128, 32)
    w = np.take(np.asarray(t), np.asarray(codes)) * np.repeat(np.asarray(s), 32, 0)
    y = fr.flute_matmul(x, p, s, t, bits=3, group_size=32)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 3, 2])
@pytest.mark.parametrize("g", [32, 64, 128, 256])
def test_pallas_interpret_matches_reference(bits, g):
    k, n = 2 * g, 32  # two groups: the in-kernel loop runs twice; grid: one M tile x 2 N tiles
    for m in (1, 7, 16, 32):  # every M pads to one 32-row tile: one compiled kernel per (bits, G)
        x, p, s, t, _ = _operands(bits, g, m, k, n, seed=m)
        ref = fr.flute_matmul(x, p, s, t, bits=bits, group_size=g)
        y = fp.flute_matmul(x, p, s, t, bits=bits, group_size=g, block_n=16, block_m=32, interpret=True)
        assert y.shape == (m, n) and y.dtype == x.dtype
        np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=2e-5, atol=2e-4)


def test_pallas_interpret_split_k_batch_dims_and_bf16_paired_table():
    x, p, s, t, _ = _operands(4, 32, 6, 256, 32, seed=3)
    x3 = x.reshape(2, 3, 256)
    ref = fr.flute_matmul(x3, p, s, t, bits=4, group_size=32)
    y = fp.flute_matmul(x3, p, s, t, bits=4, group_size=32, split_k=4, interpret=True)
    assert y.shape == (2, 3, 32)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=2e-5, atol=2e-4)
    # bf16 activations: the 4-bit paired (vectorized) table, bf16 dot with f32 accumulation
    xb = x.astype(jnp.bfloat16)
    refb = fr.flute_matmul(xb.astype(jnp.float32), p, s, t, bits=4, group_size=32)  # exact in f32
    yb = fp.flute_matmul(xb, p, s, t, bits=4, group_size=32, split_k=2, interpret=True)
    assert yb.dtype == jnp.bfloat16
    err = np.abs(np.asarray(yb, np.float32) - np.asarray(refb)).max()
    assert err < 1e-2 * np.abs(np.asarray(refb)).max(), err  # bf16 output rounding only


def test_pair_table_holds_both_nibbles():
    t = jnp.asarray(QuantFormat.make(4, 64).table_array)
    pt = np.asarray(fp.pair_table(t))
    lo = (pt << 16).view(np.float32)
    hi = (pt & np.uint32(0xFFFF0000)).view(np.float32)
    tb = np.asarray(t.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(lo, tb[np.arange(256) & 15])
    np.testing.assert_array_equal(hi, tb[np.arange(256) >> 4])


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_cross_lowering_for_cuda(bits):
    """The real Pallas -> Triton lowering for an H100, on this CPU machine: unlowerable ops fail here."""
    for g in (32, 64, 128, 256):
        lowered = fp.cross_lower((1,), 4 * g, 256, bits=bits, group_size=g, dtype=jnp.bfloat16)
        assert "triton" in lowered.as_text().lower()
    # f32 activations, M = 32, split-K, a non-power-of-two K and N (SmolLM2's 576 x 192)
    fp.cross_lower((32,), 576, 192, bits=bits, group_size=64, dtype=jnp.float32, split_k=3)


def test_cross_lowering_catches_unlowerable_ops():
    """Control: a kernel using jnp.take on a value (works in interpret mode) must fail the GPU lowering."""
    from jax.experimental.pallas import triton as pltriton

    def kern(t_ref, i_ref, o_ref):
        o_ref[...] = jnp.take(t_ref[...], i_ref[...], axis=0)

    def f(t, i):
        return pl.pallas_call(kern, out_shape=jax.ShapeDtypeStruct((16,), jnp.float32),
                              compiler_params=pltriton.CompilerParams())(t, i)

    t, i = jnp.arange(16.0), jnp.arange(16, dtype=jnp.int32)[::-1]
    np.testing.assert_array_equal(np.asarray(pl.pallas_call(
        kern, out_shape=jax.ShapeDtypeStruct((16,), jnp.float32), interpret=True)(t, i)), np.arange(16.0)[::-1])
    with pytest.raises(NotImplementedError, match="gather"):
        fp.lower_for_gpu(f, jax.ShapeDtypeStruct((16,), jnp.float32), jax.ShapeDtypeStruct((16,), jnp.int32))


def test_dispatcher_and_errors():
    x, p, s, t, _ = _operands(2, 64, 3, 128, 16)
    assert flute.resolve_impl(None, 16) == ("pallas" if jax.default_backend() == "gpu" else "reference")
    assert flute.resolve_impl(None, 24) == "reference"  # N % 16 != 0 never goes to the kernel
    ref = flute.flute_matmul(x, p, s, t, bits=2, group_size=64)
    with flute.use_impl("interpret"):
        y = flute.flute_matmul(x, p, s, t, bits=2, group_size=64)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=2e-5, atol=2e-4)
    with pytest.raises(ValueError, match="impl='cuda'"):
        flute.flute_matmul(x, p, s, t, bits=2, group_size=64, impl="cuda")
    with pytest.raises(ValueError, match="table has shape"):
        flute.flute_matmul(x, p, s, t[:3], bits=2, group_size=64)
    with pytest.raises(ValueError, match="bits=5"):
        flute.flute_matmul(x, p, s, t, bits=5, group_size=64)
    with pytest.raises(ValueError, match="group_size=256 does not divide.*K=128"):
        flute.flute_matmul(x, p, s, t, bits=2, group_size=256)
    with pytest.raises(ValueError, match="packed has"):
        flute.flute_matmul(x, p[:-1], s, t, bits=2, group_size=64)
    with pytest.raises(ValueError, match="split_k=3"):
        fp.flute_matmul(x, p, s, t, bits=2, group_size=64, split_k=3, interpret=True)
    np.testing.assert_array_equal(np.asarray(unpack(p, 2, 64)).shape, (128, 16))
