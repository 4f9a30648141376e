"""Timestep embeddings, conv / GroupNorm / resampling layers and the diffusion training loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.diffusion import diffusion_loss, make_schedule, sample_t, target_from
from jaxlm.errors import ConfigError
from jaxlm.nn.conv import Conv, Downsample, GroupNorm, ResBlock, Upsample
from jaxlm.nn.time import TimestepEmbedder, timestep_embedding


def test_timestep_embedding_ddpm_and_adm_conventions():
    t = np.array([0, 1, 17, 999])
    dim, half = 16, 8
    ddpm, adm, odd = jax.jit(lambda t: (timestep_embedding(t, dim), timestep_embedding(t, dim, flip_sin_to_cos=True,
                                                                                         freq_shift=0.0),
                                        timestep_embedding(t, 7)))(jnp.asarray(t))
    f = np.exp(-math.log(10000) / (half - 1) * np.arange(half))  # Ho et al.'s tensorflow code
    np.testing.assert_allclose(np.asarray(ddpm), np.concatenate([np.sin(t[:, None] * f), np.cos(t[:, None] * f)], 1),
                               atol=2e-4)
    f = np.exp(-math.log(10000) * np.arange(half) / half)  # ADM: cos first, freq_shift 0
    np.testing.assert_allclose(np.asarray(adm), np.concatenate([np.cos(t[:, None] * f), np.sin(t[:, None] * f)], 1),
                               atol=2e-4)
    assert odd.shape == (4, 7) and (np.asarray(odd)[:, -1] == 0).all()
    with pytest.raises(ConfigError, match="dim"):
        timestep_embedding(jnp.zeros(2), 1)


def _np_conv(x, k, stride, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = k.shape[:2]
    H = (x.shape[1] - kh) // stride + 1
    W = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], H, W, k.shape[-1]))
    for i in range(H):
        for j in range(W):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, k)
    return out


def _build_2d():
    r = nnx.Rngs(0)
    return Conv(4, 8, (3, 3), padding=1, rngs=r), Downsample(4, (2, 2), rngs=r), GroupNorm(4, 2)


@nnx.jit
def _apply_2d(conv, down, gn, x):
    return (conv(x), down(x), gn(x), Downsample(4, (2, 2), use_conv=False)(x),
            Upsample(4, (2, 2), use_conv=False)(x))


def test_conv_groupnorm_resampling_vs_numpy():
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype(np.float32)
    conv, down, gn = _build_2d()
    y_conv, y_down, y_gn, pooled, up = map(np.asarray, _apply_2d(conv, down, gn, jnp.asarray(x)))
    np.testing.assert_allclose(y_conv, _np_conv(x, np.asarray(conv.kernel[...]), 1, 1), atol=1e-4)
    np.testing.assert_allclose(y_down, _np_conv(x, np.asarray(down.conv.kernel[...]), 2, 1), atol=1e-4)
    g = x.reshape(2, 36, 2, 2)
    want = ((g - g.mean((1, 3), keepdims=True)) / np.sqrt(g.var((1, 3), keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(y_gn, want, atol=1e-5)
    np.testing.assert_allclose(pooled, x.reshape(2, 3, 2, 3, 2, 4).mean((2, 4)), atol=1e-6)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(x, 2, 1), 2, 2))
    # logical axis names on the parameters
    assert conv.kernel.axes == (None, None, "embed", "mlp") and conv.bias.axes == ("mlp",)
    assert gn.scale.axes == ("norm",)
    with pytest.raises(ConfigError, match="num_groups"):
        GroupNorm(6, 4)


def _build_video():
    r = nnx.Rngs(1)
    return (ResBlock(8, 8, 16, kernel_size=(1, 3, 3), num_groups=4, rngs=r),
            ResBlock(8, 12, 16, kernel_size=(1, 3, 3), num_groups=4, use_scale_shift_norm=True, rngs=r),
            Downsample(8, (1, 2, 2), rngs=r), Upsample(8, (1, 2, 2), rngs=r), TimestepEmbedder(16, 16, rngs=r))


@nnx.jit
def _apply_video(same, wider, down, up, emb, v):
    temb = emb(jnp.arange(2))
    return same(v, temb), wider(v, temb), wider.skip(v), down(v), up(v), temb


def test_resblock_and_video_layers():
    v = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4, 4, 8)), jnp.float32)  # [B, F, H, W, C]
    same, wider, down, up, emb = _build_video()
    y_same, y_wider, skip, y_down, y_up, temb = _apply_video(same, wider, down, up, emb, v)
    np.testing.assert_allclose(np.asarray(y_same), np.asarray(v), atol=1e-6)  # zero-initialised out conv
    np.testing.assert_allclose(np.asarray(y_wider), np.asarray(skip), atol=1e-6)
    assert y_wider.shape == (2, 3, 4, 4, 12) and y_down.shape == (2, 3, 2, 2, 8) and y_up.shape == (2, 3, 8, 8, 8)
    assert temb.shape == (2, 16)
    assert emb.mlp.fc1.kernel.axes == (None, "mlp") and emb.mlp.fc2.kernel.axes == ("mlp", "embed")
    with pytest.raises(ConfigError, match="temb"):
        same(v)


def test_diffusion_loss():
    sched = make_schedule("cosine", 100)
    c = jnp.linspace(-1, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    x0 = jnp.concatenate([c, -c])  # [4, 4, 4, 3] images

    def exact(p):  # the exact model of data at a known x0 (one point per example)
        def f(x, t, cond):
            a = sched.alphas_cumprod[t][:, None, None, None]
            return target_from(sched, x0, (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a), t, p)
        return f

    @jax.jit
    def run(rng):
        out = {p: diffusion_loss(exact(p), x0, rng, sched, p) for p in ("eps", "x0", "v")}
        zero = lambda x, t, cond: jnp.zeros_like(x)
        out["mse"] = diffusion_loss(zero, x0, rng, sched, "v", "mse", return_aux=True)
        out["l1"] = diffusion_loss(zero, x0, rng, sched, "v", "l1", "stratified", return_aux=True)
        out["strat"] = sample_t(rng, 10, 100, "stratified")
        return out

    out = run(jax.random.PRNGKey(0))
    for p in ("eps", "x0", "v"):
        assert out[p].shape == (4,) and float(jnp.max(out[p])) < 1e-8, p
    mse, aux = out["mse"]
    np.testing.assert_allclose(np.asarray(mse), np.mean(np.asarray(aux["target"]) ** 2, axis=(1, 2, 3)), rtol=1e-6)
    l1, aux = out["l1"]
    np.testing.assert_allclose(np.asarray(l1), np.mean(np.abs(np.asarray(aux["target"])), axis=(1, 2, 3)), rtol=1e-6)
    strat = np.sort(np.asarray(out["strat"]))
    assert (np.diff(strat // 10) <= 1).all() and len(set((strat // 10).tolist())) >= 9  # one t per stratum (±1)


def test_conv_modules_are_static_jit_arguments():
    """A Conv/Downsample graphdef must be hashable (padding held as tuples) to be a static argument of jax.jit."""
    from flax import nnx

    from jaxlm.nn.conv import Conv, Downsample

    for mod in (Conv(2, 3, (3, 3), padding=1, rngs=nnx.Rngs(0)), Downsample(2, rngs=nnx.Rngs(0))):
        gdef, _ = nnx.split(mod)
        hash(gdef)
