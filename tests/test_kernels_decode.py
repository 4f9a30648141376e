"""Decode attention (kernels/decode, jaxlm/nn/decode.py): the Pallas kernel (interpret mode) and the XLA path vs
today's `attend` over ragged rows, CUDA cross-lowering, the dispatcher, and the compiled decode step of a tiny
model: the stacked cache is donated and updated in place (no full-cache copy), read far fewer times than before."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.decode_bytes import bytes_accessed, compile_step, hlo_facts, layer_shapes, materialised
from jaxlm.errors import ConfigError, ShapeError
from jaxlm.nn.attention import attend
from jaxlm.nn.decode import LayerCache, decode_attend, decode_attend_xla, use_impl
from kernels.decode import pallas as kd

L, B, S, KV, D, H = 2, 3, 32, 2, 16, 6  # G = 3 query heads per kv head (padded to 4 inside the kernel)


def _operands(seed=0):
    r = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
    return f(L, B, S, KV, D), f(L, B, S, KV, D), f(B, 1, H, D), f(B, 1, KV, D), f(B, 1, KV, D)


LENGTHS = jnp.array([1, 17, 32], jnp.int32)  # ragged: one slot, a partial block, the whole cache


def _reference(q, k, v, layer, lengths, bf16_round=False, k_new=None, v_new=None):
    """attend() on the layer's slots < lengths (the new token, when given, appended as slot S)."""
    kl, vl = k[layer], v[layer]
    k_pos = jnp.broadcast_to(jnp.arange(S), (B, S))
    mask = k_pos < lengths[:, None]
    if k_new is not None:
        kl, vl = jnp.concatenate([kl, k_new], 1), jnp.concatenate([vl, v_new], 1)
        mask = jnp.concatenate([mask, jnp.ones((B, 1), bool)], 1)
    return attend(q, kl, vl, scale=D ** -0.5, bf16_round=bf16_round, causal=False, kv_mask=mask)


@jax.jit
def _all_paths(k, v, q, kn, vn):
    """(reference, XLA path) for layer 0 without and layer 1 with the new token; the kernel for layer 1 with it."""
    out = [(_reference(q, k, v, layer, LENGTHS, False, *new), decode_attend_xla(q, k, v, layer, LENGTHS, D ** -0.5,
                                                                                False, *new))
           for layer, new in ((0, (None, None)), (1, (kn, vn)))]
    ker = kd.decode_attention(q[:, 0], k, v, 1, LENGTHS, block_s=16, interpret=True, new=(kn[:, 0], vn[:, 0]))
    return out, ker


def test_kernel_and_xla_path_match_attend():
    ((r0, x0), (r1, x1)), ker = _all_paths(*_operands())
    np.testing.assert_allclose(x0, r0, atol=2e-6)
    np.testing.assert_allclose(x1, r1, atol=2e-6)
    np.testing.assert_allclose(ker, r1[:, 0], atol=2e-6)


def test_bf16_rounding_and_dispatcher():
    k, v, q, _, _ = _operands(1)

    @jax.jit
    def paths(k, v, q):
        cache = LayerCache(k, v, jnp.int32(1))
        with use_impl("interpret"):
            ker = decode_attend(q, cache, LENGTHS, bf16_round=True)
        return _reference(q, k, v, 1, LENGTHS, bf16_round=True), decode_attend(q, cache, LENGTHS, bf16_round=True), ker

    ref, xla, ker = paths(k, v, q)
    # attend's bf16 rounding is a reduce-precision op, which XLA keeps (an f32 -> bf16 -> f32 pair it may drop)
    f32 = lambda t: t.astype(jnp.float32)
    rounded = jax.jit(lambda k, q: attend(q, k, k, bf16_round=True, causal=False)).lower(f32(k[1]), f32(q))
    rounded = rounded.compile().as_text()
    assert "reduce-precision" in rounded and "bf16[" not in rounded
    np.testing.assert_allclose(xla, ref, atol=1e-6)
    np.testing.assert_allclose(ker, ref, atol=1e-6)
    cache = LayerCache(k, v, jnp.int32(1))
    # a head dim the kernel cannot take: "auto" falls back to XLA, "pallas" names the shape
    k24 = jnp.zeros((L, B, S, KV, 24))
    q24 = jnp.zeros((B, 1, H, 24))
    assert jax.eval_shape(lambda: decode_attend(q24, LayerCache(k24, k24, jnp.int32(0)), LENGTHS)).shape == (
        B, 1, H, 24)
    with pytest.raises(ShapeError, match=r"head_dim=24 \(cache shape \(2, 3, 32, 2, 24\)\)"):
        decode_attend(q24, LayerCache(k24, k24, jnp.int32(0)), LENGTHS, impl="pallas")
    with pytest.raises(ConfigError, match="impl='triton'"):
        decode_attend(q, cache, LENGTHS, impl="triton")
    with pytest.raises(ShapeError, match="one query per row"):
        decode_attend(jnp.zeros((B, 2, H, D)), cache, LENGTHS)


def test_cross_lowering_for_cuda():
    """The real Pallas -> Triton lowering for an H100, on this CPU machine."""
    assert "triton" in kd.cross_lower(8, 9, 64, 2, 128, 3, dtype=jnp.bfloat16).as_text().lower()
    kd.cross_lower(4, 8, 128, 3, 256, 8, dtype=jnp.float32, with_new=False, bf16_round=True)


def test_decode_step_updates_the_cache_in_place():
    """From the compiled decode step: the donated cache is aliased to the output and no op copies the stacked cache
    (the old slice-in / stack-out scan copied it twice per step outside the loop). Batch 1 too: there XLA would
    turn the one-slot scatter into a dynamic-update-slice and copy the cache around it. The layer scan still copies
    each layer's weights (and cache) out of the stack today; the unrolled step over per-layer buffers copies
    nothing (asserted; the scan's copies are XLA's to remove)."""
    for loop, batch in (("scan", 1), ("unrolled", 1), ("unrolled", 4)):
        compiled, _, args, cache = _step(loop, batch, 64)
        hlo = compiled.as_text()
        aliased, copies = hlo_facts(hlo, jax.tree.leaves(cache.k)[0].shape)
        assert aliased and not copies, (batch, loop, copies[:2])
        if loop == "unrolled":
            copied = materialised(hlo, layer_shapes(args, cache))
            assert not copied, (batch, loop, copied)


_STEPS = {}


def _step(loop, batch, capacity):
    key = (loop, batch, capacity)
    if key not in _STEPS:
        _STEPS[key] = compile_step("smollm2-tiny", 2, batch, capacity, loop)
    return _STEPS[key]


def test_unrolled_step_reads_weights_and_cache_once():
    """Unrolled step, from XLA's cost model (no loop, so every op counts): bytes accessed = one read of the weights
    (each layer's copy and the tied embedding as the head) + one read of the cache (slope over two capacities) +
    a little; the scan's cost model counts its loop body once, so only the unrolled step can be checked so. Batch 1:
    the new slot is a dynamic-update-slice, charged as what it writes (a multi-row scatter is charged as a full read +
    write of its operand, though it runs in place on the aliased buffer)."""
    (c1, _, a1, k1), (c2, _, _, k2) = (_step("unrolled", 1, s) for s in (64, 128))
    cache = lambda k: sum(x.nbytes for x in jax.tree.leaves((k.k, k.v)))
    passes = (bytes_accessed(c2) - bytes_accessed(c1)) / (cache(k2) - cache(k1))
    weights = sum(x.nbytes for x in jax.tree.leaves(a1[0]))
    wpasses = (bytes_accessed(c1) - passes * cache(k1)) / weights
    # one read, plus the softmax's [B, S, KV, G] intermediates (0.6 of a pass at this tiny head_dim; 0.2 at
    # SmolLM2's); a copy of a layer's cache would add 2 (read + write), a copy of the weights 2 (~3 passes)
    assert 0.9 < passes < 2.0, passes
    assert 0.9 < wpasses < 1.5, wpasses  # each weight read once (at least once, at most half a pass to spare)


def test_auto_layer_loop_byte_cap(monkeypatch):
    """"auto" unrolls (a second copy of the layer weights) only up to MAX_UNROLLED layers and
    min(MAX_UNROLLED_BYTES, host RAM / 8) bytes of layer weights."""
    from flax import nnx

    import jaxlm.infer.layers as layers_lib
    from jaxlm.config import preset
    from jaxlm.infer.layers import MAX_UNROLLED, MAX_UNROLLED_BYTES, layer_loop, unrolled_fits
    from jaxlm.models.decoder import DecoderLM

    model = DecoderLM(preset("smollm2-tiny"), rngs=nnx.Rngs(0))
    assert layer_loop(model, None, "auto") == "unrolled"  # CPU
    monkeypatch.setattr(layers_lib, "MAX_UNROLLED_BYTES", 1024)  # below this model's layer weights
    assert layer_loop(model, None, "auto") == "scan"
    monkeypatch.undo()

    gib = 1 << 30
    assert unrolled_fits(30, 540 << 20, 64 * gib)  # SmolLM2-135M-sized f32 layers
    assert not unrolled_fits(32, 27 * gib, 128 * gib)  # a 7B model in float32
    assert unrolled_fits(4, MAX_UNROLLED_BYTES, None) and not unrolled_fits(4, MAX_UNROLLED_BYTES + 1, None)
    assert not unrolled_fits(4, gib + 1, 8 * gib) and unrolled_fits(4, gib, 8 * gib)  # RAM / 8
    assert not unrolled_fits(MAX_UNROLLED + 1, 1, None)


@pytest.mark.slow
def test_decode_step_cache_passes():
    """Bytes XLA's cost model charges per byte of cache (slope over two capacities) stay below 4: the in-place
    scatter (charged as a full read + write of its operand) and about one read of the layer. The old per-layer
    slice-in / stack-out path measured 8.3 here."""
    (c1, _, _, k1), (c2, _, _, k2) = (compile_step("smollm2-tiny", 2, 4, s, "scan") for s in (64, 256))
    passes = (bytes_accessed(c2) - bytes_accessed(c1)) / (2 * (k2.k.nbytes - k1.k.nbytes))
    assert passes < 4.0, passes
