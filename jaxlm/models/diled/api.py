"""What a user does with a trained DiLED: encode, decode (greedy or sampled for sequences), reconstruct, generate
(DDPM or DDIM from noise, then decode), interpolate (lerp / slerp) and latent arithmetic.

Every function takes the `DiLED` module and runs jitted code on `nnx.split(model)` (graphdef and the options are
static; compiled once per shape). Batched over the leading axis; a fixed `rng` reproduces a result.

Sequence outputs are token ids: text [B, max_len - 1] (generated after BOS; PAD after the first EOS), proteins
[B, L]; images [B, H, W, C]. `jaxlm.models.diled.data` turns them back into strings.

The DDPM sampler is the original's (`DDPM.sample`: i = T..1, x ← (x - β/√(1-ᾱ_i) ε̂)/√α_i + √β z, no noise on the
last step), i.e. `jaxlm.diffusion.sample` on the T + 1 step constant schedule along T, T-1, ..., 0 with
variance="large", final_noise=False. DDIM walks `steps` evenly spaced levels from T down to 0 (η = 0: deterministic).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.diffusion import sample
from jaxlm.errors import ConfigError, ShapeError
from jaxlm.models.diled.objective import eddpm_schedule


def _model(graphdef, state):
    return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------------------------- encode / decode


@partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, batch):
    return _model(graphdef, state).encode(batch)


def encode(model, batch):
    """μ [B, d] of a batch ({"tokens"} for text / proteins, {"image"} for images)."""
    g, s = nnx.split(model)
    return _encode(g, s, {k: jnp.asarray(v) for k, v in batch.items() if k in ("tokens", "image")})


def _text_decode(ae, z, rng, greedy: bool, temperature: float, max_len: int):
    cfg = ae.cfg
    B = z.shape[0]
    cache = ae.memory_cache(z, max_len)

    def step(carry, key):
        cache, tok, done = carry
        logits, cache = ae.decode_step(z, tok[:, None], cache)
        lg = logits[:, -1]
        nxt = jnp.argmax(lg, -1) if greedy else jax.random.categorical(key, lg / temperature)
        nxt = jnp.where(done, cfg.pad_id, nxt).astype(jnp.int32)
        return (cache, nxt, done | (nxt == cfg.eos_id)), nxt

    init = (cache, jnp.full((B,), cfg.bos_id, jnp.int32), jnp.zeros((B,), bool))
    _, toks = jax.lax.scan(step, init, jax.random.split(rng, max_len - 1))
    return toks.T


@partial(jax.jit, static_argnums=(0, 4, 5))
def _decode(graphdef, state, z, rng, greedy, temperature):
    m = _model(graphdef, state)
    if m.cfg.modality == "text":
        return _text_decode(m.ae, z, rng, greedy, temperature, m.cfg.ae.max_len)
    if m.cfg.modality == "protein":
        lg = m.ae.decode(z)
        return (jnp.argmax(lg, -1) if greedy else jax.random.categorical(rng, lg / temperature)).astype(jnp.int32)
    return m.ae.decode(z)


def check_latents(model, z):
    d = model.cfg.latent_dim
    if z.ndim != 2 or z.shape[-1] != d:
        raise ShapeError(f"latents have shape {tuple(z.shape)}; expected [B, {d}] (latent_dim={d})")


def decode(model, z, rng=None, *, method: str = "greedy", temperature: float = 1.0):
    """Decode latents z [B, d]: text / proteins greedily (method="greedy") or by sampling ("sample", at
    `temperature`); images deterministically."""
    if method not in ("greedy", "sample"):
        raise ConfigError(f"method={method!r}: expected 'greedy' or 'sample'")
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature!r}: must be > 0")
    rng = jax.random.key(0) if rng is None else rng
    check_latents(model, jnp.asarray(z))
    g, s = nnx.split(model)
    return _decode(g, s, jnp.asarray(z, jnp.float32), rng, method == "greedy", float(temperature))


def reconstruct(model, batch, rng=None, **kw):
    """decode(encode(batch)) (from μ, as the original's reconstruction evaluation)."""
    return decode(model, encode(model, batch), rng, **kw)


# ------------------------------------------------------------------------------------------------------ generate


def sampling_path(T: int, method: str, steps: int | None) -> np.ndarray:
    if method == "ddpm":
        return np.arange(T, -1, -1)
    if method != "ddim":
        raise ConfigError(f"method={method!r}: expected 'ddpm' or 'ddim'")
    steps = T if steps is None else int(steps)
    if not 1 <= steps <= T:
        raise ConfigError(f"steps={steps}: DDIM steps must lie in [1, {T}]")
    return np.unique(np.round(np.linspace(0, T, steps + 1)).astype(np.int64))[::-1]


@partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _sample_latents(graphdef, state, rng, n, method, path):
    m = _model(graphdef, state)
    lc = m.cfg.loss
    k0, k1 = jax.random.split(rng)
    x = jax.random.normal(k0, (n, m.cfg.latent_dim), jnp.float32)
    kw = dict(variance="large") if method == "ddpm" else dict(eta=0.0)
    return sample(lambda x_t, t, c: m.eps(x_t, t), eddpm_schedule(lc), x, k1, timesteps=jnp.asarray(path),
                  method=method, final_noise=False, **kw)


def sample_latents(model, n: int, rng, *, method: str = "ddpm", steps: int | None = None):
    """n latents [n, d] from the latent diffusion (x_T ~ N(0, I) -> level 0)."""
    path = tuple(int(t) for t in sampling_path(model.cfg.loss.num_steps, method, steps))
    g, s = nnx.split(model)
    return _sample_latents(g, s, rng, int(n), method, path)


def generate(model, n: int, rng, *, method: str = "ddpm", steps: int | None = None,
             decode_method: str = "greedy", temperature: float = 1.0):
    """(latents [n, d], decoded samples): sample the latent DDPM / DDIM, then decode."""
    k1, k2 = jax.random.split(rng)
    z = sample_latents(model, n, k1, method=method, steps=steps)
    return z, decode(model, z, k2, method=decode_method, temperature=temperature)


# ----------------------------------------------------------------------------------------- latent space editing


def slerp(a, b, alpha):
    """Spherical interpolation per row (falls back to lerp for parallel vectors)."""
    na, nb = jnp.linalg.norm(a, axis=-1, keepdims=True), jnp.linalg.norm(b, axis=-1, keepdims=True)
    cos = jnp.clip(jnp.sum(a * b, -1, keepdims=True) / jnp.maximum(na * nb, 1e-12), -1.0, 1.0)
    omega = jnp.arccos(cos)
    so = jnp.sin(omega)
    safe = so > 1e-6
    wa = jnp.where(safe, jnp.sin((1 - alpha) * omega) / jnp.where(safe, so, 1.0), 1 - alpha)
    wb = jnp.where(safe, jnp.sin(alpha * omega) / jnp.where(safe, so, 1.0), alpha)
    return wa * a + wb * b


def interpolate_latents(za, zb, alphas, mode: str = "lerp"):
    """[A, B, d] latents between za and zb [B, d] at each alpha."""
    if mode not in ("lerp", "slerp"):
        raise ConfigError(f"mode={mode!r}: expected 'lerp' or 'slerp'")
    al = jnp.asarray(alphas, jnp.float32)
    if mode == "lerp":
        return (1 - al)[:, None, None] * za[None] + al[:, None, None] * zb[None]
    return jax.vmap(lambda a: slerp(za, zb, a))(al)


def interpolate(model, batch_a, batch_b, alphas=(0.2, 0.4, 0.6, 0.8), *, mode: str = "lerp", rng=None,
                **decode_kw):
    """Decoded interpolations between two batches' latents: a list (one per alpha) of decoded batches, and the
    latents [A, B, d]."""
    za, zb = encode(model, batch_a), encode(model, batch_b)
    if za.shape != zb.shape:
        raise ShapeError(f"interpolate: the two batches encode to {tuple(za.shape)} and {tuple(zb.shape)}")
    zs = interpolate_latents(za, zb, alphas, mode)
    A, B = zs.shape[:2]
    out = decode(model, zs.reshape(A * B, -1), rng, **decode_kw)
    return [out[i * B:(i + 1) * B] for i in range(A)], zs


def arithmetic(model, batch_a, batch_b, batch_c, *, scale: float = 1.0, rng=None, **decode_kw):
    """Decode z_c + scale · (z_a - z_b) (e.g. a = "x with attribute", b = "x without", c = a new input)."""
    za, zb, zc = (encode(model, b) for b in (batch_a, batch_b, batch_c))
    z = zc + scale * (za - zb)
    return decode(model, z, rng, **decode_kw), z


__all__ = ["encode", "decode", "reconstruct", "generate", "sample_latents", "interpolate", "interpolate_latents",
           "arithmetic", "slerp", "sampling_path", "check_latents"]
