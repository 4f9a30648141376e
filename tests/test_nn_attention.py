"""Attention modes against a direct numpy computation of softmax(Q K^T * scale + mask) V (float32, 1e-5):
causal and bidirectional self-attention with a key padding mask, grouped-query heads, and cross-attention to a
memory with its own mask; then the decoder stack run as an encoder (cfg.causal=False)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import preset
from jaxlm.errors import ConfigError, ShapeError
from jaxlm.models.decoder import DecoderLM, KVCache
from jaxlm.nn import Attention, CrossAttention, attend

TOL = dict(atol=1e-5, rtol=1e-5)


def jit_method(module, method="__call__", **static):
    """module.method jitted once (eager dispatch of many tiny ops costs more than one compile)."""
    g, st = nnx.split(module)
    f = jax.jit(lambda st, *a, **kw: getattr(nnx.merge(g, st), method)(*a, **kw, **static))
    return lambda *a, **kw: f(st, *a, **kw)


def ref_attention(q, k, v, scale, allowed):
    """q [B,T,H,D], k/v [B,S,KV,D], allowed [B,T,S] bool -> [B,T,H,D], written out head by head."""
    B, T, H, D = q.shape
    G = H // k.shape[2]
    out = np.zeros((B, T, H, D), np.float64)
    for b in range(B):
        for h in range(H):
            s = q[b, :, h].astype(np.float64) @ k[b, :, h // G].astype(np.float64).T * scale
            s = np.where(allowed[b], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, :, h] = (p / p.sum(-1, keepdims=True)) @ v[b, :, h // G]
    return out


def lin(x, mod):
    y = x @ np.asarray(mod.kernel[...])
    return y if mod.bias is None else y + np.asarray(mod.bias[...])


def ref_rope_half(x, pos, theta):
    """NeoX rotate-half over the whole head dim; x [B,T,H,D], pos [B,T]."""
    D = x.shape[-1]
    ang = pos[..., None].astype(np.float64) * theta ** (-np.arange(0, D, 2) / D)  # [B,T,D/2]
    c, s = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


RNG = np.random.default_rng(0)
B, T, S, H, KV, D = 2, 5, 7, 4, 2, 8
KEY_MASK = np.array([[1] * S, [1] * 4 + [0] * (S - 4)], bool)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_attend_matches_reference_gqa_masked(causal):
    q, k, v = (RNG.standard_normal(s).astype(np.float32) for s in ((B, S, H, D), (B, S, KV, D), (B, S, KV, D)))
    pos = np.broadcast_to(np.arange(S), (B, S))
    allowed = np.broadcast_to(KEY_MASK[:, None, :], (B, S, S))
    if causal:
        allowed = allowed & (pos[:, None, :] <= pos[:, :, None])
    got = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(pos), jnp.asarray(pos), 0.3,
                 causal=causal, kv_mask=jnp.asarray(KEY_MASK))
    np.testing.assert_allclose(np.asarray(got), ref_attention(q, k, v, 0.3, allowed), **TOL)


def test_bidirectional_self_attention_module():
    cfg = preset("smollm2-tiny", hidden_size=32, num_heads=H, num_kv_heads=KV, head_dim=D, qkv_bias=True,
                 causal=False)
    att = Attention(cfg, rngs=nnx.Rngs(0))
    assert not att.causal and Attention(cfg, rngs=nnx.Rngs(0), causal=True).causal
    x = RNG.standard_normal((B, S, 32)).astype(np.float32)
    pos = np.broadcast_to(np.arange(S), (B, S))
    out, kv = jit_method(att)(jnp.asarray(x), jnp.asarray(pos), mask=jnp.asarray(KEY_MASK))
    assert kv is None
    q = ref_rope_half(lin(x, att.q).reshape(B, S, H, D), pos, cfg.rope_theta)
    k = ref_rope_half(lin(x, att.k).reshape(B, S, KV, D), pos, cfg.rope_theta)
    v = lin(x, att.v).reshape(B, S, KV, D)
    o = ref_attention(q, k, v, D ** -0.5, np.broadcast_to(KEY_MASK[:, None, :], (B, S, S)))
    np.testing.assert_allclose(np.asarray(out), lin(o.reshape(B, S, H * D), att.o), **TOL)
    p = np.asarray(jit_method(att, "probs")(jnp.asarray(x), jnp.asarray(pos), mask=jnp.asarray(KEY_MASK)))
    assert p.shape == (B, H, S, S) and np.all(p[1, :, :, 4:] == 0) and np.all(p[1, :, 0, :4] > 0)
    with pytest.raises(ConfigError, match="KV cache"):
        att(jnp.asarray(x), jnp.asarray(pos), (jnp.zeros((B, 8, KV, D)),) * 2, jnp.zeros((B,), jnp.int32))
    with pytest.raises(ShapeError, match=r"attention mask has shape \(2, 3\)"):
        att(jnp.asarray(x), jnp.asarray(pos), mask=jnp.ones((2, 3), bool))


def test_cross_attention_gqa_with_memory_mask():
    Dm = 24
    ca = CrossAttention(32, H, memory_dim=Dm, num_kv_heads=KV, head_dim=D, qkv_bias=True, out_bias=True,
                        scale_power=1.0, rngs=nnx.Rngs(1))
    x = RNG.standard_normal((B, T, 32)).astype(np.float32)
    mem = RNG.standard_normal((B, S, Dm)).astype(np.float32)
    call = jit_method(ca)
    out = np.asarray(call(jnp.asarray(x), jnp.asarray(mem), jnp.asarray(KEY_MASK)))
    q = lin(x, ca.q).reshape(B, T, H, D)
    k, v = (lin(mem, m).reshape(B, S, KV, D) for m in (ca.k, ca.v))
    o = ref_attention(q, k, v, 1.0 / D, np.broadcast_to(KEY_MASK[:, None, :], (B, T, S)))
    assert out.shape == (B, T, 32)
    np.testing.assert_allclose(out, lin(o.reshape(B, T, H * D), ca.o), **TOL)
    # precomputed memory keys/values give the same output; no mask = every memory slot
    kv = jit_method(ca, "memory_kv")(jnp.asarray(mem))
    np.testing.assert_allclose(np.asarray(call(jnp.asarray(x), kv=kv, memory_mask=jnp.asarray(KEY_MASK))), out,
                               **TOL)
    o_all = ref_attention(q, k, v, 1.0 / D, np.ones((B, T, S), bool))
    np.testing.assert_allclose(np.asarray(call(jnp.asarray(x), jnp.asarray(mem))),
                               lin(o_all.reshape(B, T, H * D), ca.o), **TOL)
    with pytest.raises(ShapeError, match=r"memory has shape \(2, 7, 32\)"):
        ca(jnp.asarray(x), jnp.zeros((B, S, 32)))
    from_cfg = CrossAttention.from_config(preset("smollm2-tiny"), memory_dim=Dm, rngs=nnx.Rngs(0))
    assert from_cfg.k.kernel.shape == (Dm, 2 * 16) and from_cfg.q.kernel.shape == (64, 4 * 16)


def test_decoder_stack_as_encoder():
    cfg = preset("smollm2-tiny", init_std=0.3)  # the shapes other tests build (eager init compiled once)
    enc_model = DecoderLM(cfg.replace(causal=False), rngs=nnx.Rngs(0))
    enc, dec = jit_method(enc_model), jit_method(DecoderLM(cfg, rngs=nnx.Rngs(0)))
    ids = jnp.asarray(RNG.integers(0, 256, (2, 6)), jnp.int32)
    other = ids.at[:, 5].set((ids[:, 5] + 1) % 256)
    # a later token changes the encoder's first position, never the decoder's
    assert not np.allclose(np.asarray(enc(ids))[:, 0], np.asarray(enc(other))[:, 0])
    np.testing.assert_array_equal(np.asarray(dec(ids))[:, :5], np.asarray(dec(other))[:, :5])
    # right padding masked out of the keys leaves the real positions as they were without it
    padded = jnp.concatenate([ids, jnp.zeros((2, 3), jnp.int32)], axis=1)
    mask = jnp.asarray([[True] * 6 + [False] * 3] * 2)
    np.testing.assert_allclose(np.asarray(enc(padded, mask=mask))[:, :6], np.asarray(enc(ids)), atol=1e-5)
    enc = enc_model
    with pytest.raises(ConfigError, match="encoder"):
        enc(ids, cache=KVCache.zeros(enc.cfg, 1, 8))
