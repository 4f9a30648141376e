"""Attention paths (kernels/attention) vs the reference, forward and gradients; GPU/TPU cross-lowering on CPU;
the dispatcher's choices, fallbacks and errors (jaxlm.nn.attention.attend)."""

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import kernels.attention as ka
from jaxlm.errors import ConfigError, ShapeError
from jaxlm.nn.attention import attend, resolve_attention_impl
from kernels.attention import reference as kr
from kernels.attention import tpu as ktpu
from kernels.attention import triton as ktr
from kernels.flute.pallas import lower_for_gpu

B, T, H, KV, D = 2, 32, 4, 2, 16


def _normal(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))  # numpy draws: no compile per shape


def _operands(S=T, seed=0):
    rng = np.random.default_rng(seed)
    return _normal(rng, B, T, H, D), _normal(rng, B, S, KV, D), _normal(rng, B, S, KV, D), _normal(rng, B, T, H, D)


# packed documents: row 0 = docs of 12 + 20 tokens; row 1 = one doc, its last 8 keys padded (kv_mask False)
SEG = np.stack([np.r_[np.zeros(12), np.ones(20)], np.zeros(32)]).astype(np.int32)
KV_MASK = np.ones((B, T), bool)
KV_MASK[1, 24:] = False
KV_MASK[1, :4] = False  # query 0..3 of row 1 then have nothing to attend under causal: the uniform-softmax rule


CONFIGS = {  # (causal, cross-attention, scale)
    "causal-packed-padded": (True, False, D ** -0.5),  # Llama's 1/sqrt(d)
    "cross-bidirectional": (False, True, 1.0 / D),  # Crystal's 1/d; S = 48 keys != T queries
}


@functools.lru_cache(maxsize=None)
def _loss_and_grads(impl: str, config: str):
    """jit(value_and_grad) of sum(attention * w) for one path; cached (one compile per path and config). The
    kernels run with 16-wide blocks: several key blocks per row, causal block skipping, chunk padding."""
    causal, cross, scale = CONFIGS[config]

    def f(q, k, v, w):
        S = k.shape[1]
        if cross:  # key padding only (row 1 drops its last 8 keys), no positions
            kw = dict(kv_mask=jnp.arange(S)[None, :] < jnp.array([[S], [S - 8]]))
            args = (q, k, v)
        else:
            pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
            kw = dict(kv_mask=jnp.asarray(KV_MASK))
            args = (q, k, v, pos, pos)
        if impl == "reference":  # jaxlm's attend: today's reference
            seg = None if cross else jnp.asarray(SEG)
            o = attend(*args, scale=scale, causal=causal, segment_ids=seg, impl="reference", **kw)
        else:
            segs = (None, None) if cross else (jnp.asarray(SEG), jnp.asarray(SEG))
            o = ka.attention(*(args + (None, None) * cross), *segs, causal=causal, scale=scale, impl=impl,
                             block_q=16, block_k=16, chunk=12, **kw)
        return jnp.sum(o.astype(jnp.float32) * w), o

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("impl,config", [
    ("chunked", "causal-packed-padded"), ("interpret", "causal-packed-padded"), ("interpret", "cross-bidirectional"),
    # the chunked path's non-causal, S != T case; its masking code is the causal case's (covered above)
    pytest.param("chunked", "cross-bidirectional", marks=pytest.mark.slow)])
def test_paths_match_reference_forward_and_gradients(impl, config):
    """GQA (4 query heads on 2 KV heads), packed segments, key padding with fully masked rows, both scales,
    cross-attention with S != T; the kernels never see a repeated KV head."""
    cross = CONFIGS[config][1]
    q, k, v, w = _operands(S=48 if cross else T)
    (_, o_ref), g_ref = _loss_and_grads("reference", config)(q, k, v, w)
    (_, o), g = _loss_and_grads(impl, config)(q, k, v, w)
    np.testing.assert_allclose(np.asarray(o), np.asarray(o_ref), rtol=1e-5, atol=2e-5)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
    if not cross:  # the empty rows really are the mean of the values (not 0, not NaN)
        mean_v = np.repeat(np.asarray(v[1]).mean(0), H // KV, axis=0)
        np.testing.assert_allclose(np.asarray(o[1, :4]), np.broadcast_to(mean_v, (4, H, D)), atol=1e-5)


def test_bf16_round_option():
    """MobiLlama's bf16 rounding (q, k, v and the output) on the chunked path against the reference's."""
    q, k, v, _ = _operands(seed=1)
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    f = jax.jit(lambda q, k, v, impl: attend(q, k, v, pos, pos, bf16_round=True, impl=impl), static_argnums=3)
    ref_r, o_r = f(q, k, v, "reference"), f(q, k, v, "chunked")
    assert o_r.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(o_r), np.asarray(o_r.astype(jnp.bfloat16).astype(jnp.float32)))
    np.testing.assert_allclose(np.asarray(o_r), np.asarray(ref_r), atol=8e-3)  # one bf16 ulp of the outputs


def _gpu_fwd_bwd(q, k, v, qp, kp, qs, ks, causal=True):
    f = lambda q, k, v: ktr.flash_attention(q, k, v, qp, kp, qs, ks, causal=causal, scale=0.125)[0].astype(
        jnp.float32).sum()
    return jax.grad(f, (0, 1, 2))(q, k, v)


@pytest.mark.parametrize("shape,dtype", [((1, 128, 8, 2, 64), jnp.bfloat16), ((1, 96, 6, 3, 128), jnp.float32)])
def test_cross_lowering_gpu_forward_and_backward(shape, dtype):
    """The real Pallas -> Triton lowering (forward, dq and dk/dv kernels) for an H100, on this CPU machine."""
    b, t, h, kv, d = shape
    S = jax.ShapeDtypeStruct
    args = (S((b, t, h, d), dtype), S((b, t, kv, d), dtype), S((b, t, kv, d), dtype)) + tuple(
        S((b, t), jnp.int32) for _ in range(4))
    text = lower_for_gpu(_gpu_fwd_bwd, *args).as_text()
    assert text.count("__gpu$xla.gpu.triton") + text.count("triton_kernel_call") >= 3 or "triton" in text.lower()


def test_cross_lowering_tpu_forward_and_backward():
    """jax.experimental.pallas.ops.tpu flash attention behind our layout (GQA, segments), lowered for TPU."""
    S = jax.ShapeDtypeStruct
    q, kv, seg = S((1, 256, 4, 128), jnp.bfloat16), S((1, 256, 2, 128), jnp.bfloat16), S((1, 256), jnp.int32)

    def f(q, k, v, s):
        loss = lambda q, k, v: ktpu.flash_attention(q, k, v, s, s, causal=True, scale=0.1).astype(jnp.float32).sum()
        return jax.grad(loss, (0, 1, 2))(q, k, v)

    assert "tpu_custom_call" in ktpu.lower_for_tpu(f, q, kv, kv, seg).as_text()


def test_dispatcher_choices_fallbacks_and_errors(monkeypatch):
    monkeypatch.delenv("JAXLM_ATTENTION_IMPL", raising=False)
    q, k, v, _ = _operands()
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    r = functools.partial(ka.resolve_impl, causal=True, same_positions=True)
    bf = jnp.bfloat16
    # auto, by backend and shape
    assert r(None, (1, 4096, 8, 64), (1, 4096, 2, 64), bf, backend="gpu") == "pallas"
    assert r(None, (1, 4096, 8, 80), (1, 4096, 2, 80), bf, backend="gpu") == "chunked"  # head dim 80: fallback
    assert r(None, (1, 100, 8, 64), (1, 100, 2, 64), bf, backend="gpu") == "reference"  # T % 16 != 0, short
    assert r(None, (1, 4096, 8, 128), (1, 4096, 2, 128), bf, backend="tpu") == "tpu"
    assert ka.resolve_impl(None, (1, 4096, 8, 128), (1, 4096, 2, 128), bf, causal=True, backend="tpu") == "chunked"
    assert r(None, (1, 4096, 8, 64), (1, 4096, 2, 64), bf, backend="cpu") == "chunked"
    assert r(None, (1, 1, 8, 64), (1, 4096, 2, 64), bf, backend="cpu") == "reference"  # one query (decode)
    assert r(None, (1, 512, 8, 64), (1, 512, 2, 64), bf, backend="cpu") == "reference"
    # forced paths that cannot take the input: a clear error naming the shape
    with pytest.raises(ShapeError, match=r"impl='pallas'.*head dim D=12.*\(2, 32, 4, 12\)"):
        attend(q[..., :12], k[..., :12], v[..., :12], pos, pos, impl="pallas")
    with pytest.raises(ShapeError, match=r"query length T=30.*\(2, 30, 4, 16\)"):
        attend(q[:, :30], k[:, :30], v[:, :30], pos[:, :30], pos[:, :30], impl="interpret")
    with pytest.raises(ShapeError, match=r"key length S=40"):
        attend(q, jnp.zeros((B, 40, KV, D)), jnp.zeros((B, 40, KV, D)), causal=False, impl="pallas")
    with pytest.raises(ShapeError, match="cuDNN attention needs bfloat16"):
        attend(q, k, v, pos, pos, impl="cudnn")
    with pytest.raises(ShapeError, match="index-causal"):
        attend(q.astype(bf), k.astype(bf), v.astype(bf), pos, pos + 0, impl="cudnn")
    with pytest.raises(ShapeError, match=r"T=32, S=32.*multiples of 128"):
        attend(q, k, v, pos, pos, impl="tpu")
    with pytest.raises(ShapeError, match="segment_ids have shapes"):
        attend(q, k, v, pos, pos, segment_ids=jnp.zeros((B, 7), jnp.int32))
    with pytest.raises(ConfigError, match="impl='cuda'"):
        attend(q, k, v, pos, pos, impl="cuda")
    monkeypatch.setenv("JAXLM_ATTENTION_IMPL", "chunked")
    assert resolve_attention_impl(None, q, k, pos, pos) == "chunked"
    with ka.use_impl("reference"):  # process-wide setting beats the environment variable
        assert resolve_attention_impl(None, q, k, pos, pos) == "reference"
        assert resolve_attention_impl("interpret", q, k, pos, pos) == "interpret"  # the argument beats both


def test_decoder_attention_layer_uses_configured_impl(monkeypatch):
    """DecoderConfig.attention_impl reaches the training path (Attention without a cache)."""
    from flax import nnx

    from jaxlm.config import preset
    from jaxlm.nn.attention import Attention

    cfg = preset("amber-tiny", attention_impl="chunked")
    layer = Attention(cfg, rngs=nnx.Rngs(0))
    seen = []
    monkeypatch.setattr(ka, "attention", lambda q, *a, **kw: seen.append(kw["impl"]) or jnp.zeros_like(q))
    jax.eval_shape(lambda x: layer(x, jnp.arange(8)[None])[0], jnp.zeros((1, 8, cfg.hidden_size)))  # trace only
    assert seen == ["chunked"]


def test_kernel_path_runs_per_shard_under_a_mesh(monkeypatch):
    """Under a mesh (fsdp 2 x tensor 2) a kernel path runs per shard (shard_map: batch over fsdp, query and KV heads
    over tensor), since the partitioner cannot split a Pallas call. The kernel is stood in for by the reference
    (its own correctness is tested above): this checks the per-shard wiring and the result."""
    from jaxlm.sharding import make_mesh, use_mesh

    rng = np.random.default_rng(5)
    q, k, v = _normal(rng, 2, 16, 4, 16), _normal(rng, 2, 16, 2, 16), _normal(rng, 2, 16, 2, 16)
    pos = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (2, 16))
    seen = []
    real = ka.attention
    monkeypatch.setattr(ka, "attention", lambda q, k, *a, **kw: seen.append((q.shape, k.shape, kw["impl"])) or real(
        q, k, *a, **{**kw, "impl": "reference"}))
    with use_mesh(make_mesh("2x2", devices=jax.devices()[:4])):
        o = jax.jit(lambda q, k, v: attend(q, k, v, pos, pos, impl="interpret"))(q, k, v)
    ref = kr.attention(q, k, v, pos, pos)  # the reference, unsharded
    assert seen == [((1, 16, 2, 16), (1, 16, 1, 16), "interpret")]  # the kernel saw one shard
    np.testing.assert_allclose(np.asarray(o), np.asarray(ref), rtol=1e-5, atol=2e-5)


@pytest.mark.slow
def test_tpu_path_numerics_in_tpu_interpret_mode():
    """The TPU path (GQA heads repeated, segments, causal, scale) forward and gradients in Pallas' TPU interpret
    mode on CPU (~40 s; the default suite lowers it for TPU instead)."""
    from jax.experimental.pallas import tpu as pltpu

    rng = np.random.default_rng(7)
    q, k, v = _normal(rng, 1, 256, 4, 128), _normal(rng, 1, 256, 2, 128), _normal(rng, 1, 256, 2, 128)
    seg = jnp.asarray((np.arange(256) >= 100).astype(np.int32))[None]
    pos = jnp.arange(256)[None]
    ref = lambda q, k, v: kr.attention(q, k, v, pos, pos, seg, seg, causal=True, scale=0.1)
    with pltpu.force_tpu_interpret_mode():
        ker = lambda q, k, v: ktpu.flash_attention(q, k, v, seg, seg, causal=True, scale=0.1)
        o, g = ker(q, k, v), jax.grad(lambda *a: ker(*a).sum(), (0, 1, 2))(q, k, v)
    np.testing.assert_allclose(np.asarray(o), np.asarray(ref(q, k, v)), atol=2e-5)
    for a, b in zip(g, jax.grad(lambda *a: ref(*a).sum(), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)
