"""DiLED modules and capabilities: MLPSkipNet against a numpy transcription of the original forward, the text
decoder's two latent routes (token embeddings + one memory slot per layer) and its cached greedy decoding equal to
teacher forcing, word dropout, the EDDPM sampling path, reproducible generation, interpolation, and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.errors import ConfigError, DataError, ShapeError
from jaxlm.models.diled import api
from jaxlm.models.diled import data as D
from jaxlm.models.diled.autoencoders import TextAE, TextAEConfig, _tiny_decoder
from jaxlm.models.diled.denoiser import MLPSkipNet, MLPSkipNetConfig
from jaxlm.models.diled.model import DiLEDConfig, diled_config, init_diled, jit_init


def _np_ln(x, g, b, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b


def test_mlpskipnet_matches_a_transcription_of_the_original_forward():
    cfg = MLPSkipNetConfig(latent_dim=3, hidden=8, num_layers=3, time_embed_dim=6)
    net = jit_init(lambda: MLPSkipNet(cfg, rngs=nnx.Rngs(0)))
    r = np.random.default_rng(0)
    x, t = r.normal(size=(2, 3)).astype(np.float32), np.array([0.25, 1.0], np.float32)  # t = _ts / n_T
    P = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    W = lambda d: (np.asarray(d["kernel"]), np.asarray(d["bias"]))
    silu = lambda v: v / (1 + np.exp(-v))
    # timestep_embedding (vae.py): freqs = exp(-ln(10000) * arange(half) / half); cat([cos, sin])
    half = 3
    args = t[:, None] * np.exp(-math.log(10000) * np.arange(half) / half)[None]
    emb = np.concatenate([np.cos(args), np.sin(args)], -1)
    (k1, b1), (k2, b2) = W(P["time_embed"]["fc1"]), W(P["time_embed"]["fc2"])
    cond = silu(emb @ k1 + b1) @ k2 + b2
    h = x
    for i in range(3):
        L = P["layers"][i]
        if i >= 1:
            h = np.concatenate([h, x], 1)
        k, b = W(L["linear"])
        h = h @ k + b
        if i < 2:  # cond layers: x * (condition_bias + Linear(SiLU(cond))), LayerNorm, SiLU
            kc, bc = W(L["cond"])
            h = h * (1.0 + silu(cond) @ kc + bc)
            h = silu(_np_ln(h, np.asarray(L["norm"]["scale"]), np.asarray(L["norm"]["bias"])))
    g, st = nnx.split(net)
    got = jax.jit(lambda st, x, t: nnx.merge(g, st)(x, t))(st, jnp.asarray(x), jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(got), h, rtol=1e-4, atol=1e-5)


def _text_ae():
    kw = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64)
    cfg = TextAEConfig(encoder=_tiny_decoder(False, **kw), decoder=_tiny_decoder(True, **kw), latent_dim=4,
                       max_len=12)
    return jit_init(lambda: TextAE(cfg, rngs=nnx.Rngs(1)))


def test_text_decoder_uses_the_latent_both_ways_and_greedy_decoding_matches_teacher_forcing():
    ae = _text_ae()
    g, st = nnx.split(ae)
    p = nnx.to_pure_dict(st)
    z = jax.random.normal(jax.random.key(0), (2, 4))
    ids = jnp.asarray(D.encode_text(["Abc de.", "Xy"], 12))

    @jax.jit
    def logits(p, z, tokens=ids):
        return nnx.merge(g, p).decode_logits(z, tokens)

    def without(name):
        q = jax.tree.map(lambda x: x, p)
        q[name]["kernel"] = jnp.zeros_like(q[name]["kernel"])
        return q

    base = logits(p, z)
    # each route alone carries the latent: zero the other projection and the logits still depend on z
    for off in ("latent_emb", "latent_mem"):
        q = without(off)
        assert np.abs(np.asarray(logits(q, z) - logits(q, 2 * z))).max() > 1e-4, off
        if off == "latent_emb":  # the memory slot sits before the tokens: position 0 already sees it
            assert np.abs(np.asarray(logits(q, z)[:, 0] - logits(q, 2 * z)[:, 0])).max() > 1e-4
    # cached greedy decoding == argmax of teacher forcing on its own output
    greedy = np.asarray(jax.jit(lambda p, z: api._text_decode(nnx.merge(g, p), z, jax.random.key(0), True, 1.0,
                                                               12))(p, z))          # [B, 11]
    forced = jnp.concatenate([jnp.full((2, 1), ae.cfg.bos_id), jnp.asarray(greedy)], 1)[:, :12]
    am = np.asarray(jnp.argmax(logits(p, z, forced), -1))
    for b in range(2):
        eos = np.flatnonzero(greedy[b] == ae.cfg.eos_id)
        n = int(eos[0]) + 1 if eos.size else greedy.shape[1]
        np.testing.assert_array_equal(greedy[b, :n], am[b, :n])
    assert base.shape == (2, 12, ae.cfg.decoder.vocab_size)
    # word dropout (training only): with an rng the dropped decoder inputs change the loss; without one
    # (evaluation), or with word_dropout 0, the loss is the original's
    drop = ae.cfg.__class__(**{**ae.cfg.__dict__, "word_dropout": 0.5})

    @jax.jit
    def rec_losses(p, k):
        m = nnx.merge(g, p)
        plain = m.rec_loss(z, {"tokens": ids}, k)
        m.cfg = drop
        return plain, m.rec_loss(z, {"tokens": ids}), m.rec_loss(z, {"tokens": ids}, k)

    plain, off, on = (np.asarray(v) for v in rec_losses(p, jax.random.key(3)))
    np.testing.assert_array_equal(off, plain)
    assert on.shape == (2,) and np.abs(on - plain).max() > 1e-6


@pytest.fixture(scope="module")
def image_model():
    return init_diled(diled_config("image", num_steps=6))


def test_sampling_path_generation_interpolation(image_model):
    np.testing.assert_array_equal(api.sampling_path(6, "ddpm", None), [6, 5, 4, 3, 2, 1, 0])  # EDDPM's loop
    np.testing.assert_array_equal(api.sampling_path(6, "ddim", 3), [6, 4, 2, 0])
    m = image_model
    z1, x1 = api.generate(m, 3, jax.random.key(5))
    z2, x2 = api.generate(m, 3, jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(z2))  # a fixed seed reproduces
    assert x1.shape == (3, 8, 8, 1)
    zd, _ = api.generate(m, 3, jax.random.key(5), method="ddim", steps=3)
    assert zd.shape == (3, 16) and np.isfinite(np.asarray(zd)).all()
    imgs = D.digits()["heldout"]["image"][:2]
    a, b = {"image": imgs[:1]}, {"image": imgs[1:2]}
    outs, zs = api.interpolate(m, a, b, (0.0, 0.5, 1.0), mode="slerp")
    za, zb = api.encode(m, a), api.encode(m, b)
    np.testing.assert_allclose(np.asarray(zs[0]), np.asarray(za), atol=1e-5)
    np.testing.assert_allclose(np.asarray(zs[2]), np.asarray(zb), atol=1e-5)
    # slerp keeps the norm between the endpoints' (equal norms -> equal norm)
    u, v = jnp.array([[3.0, 0.0]]), jnp.array([[0.0, 3.0]])
    np.testing.assert_allclose(float(jnp.linalg.norm(api.slerp(u, v, 0.5))), 3.0, rtol=1e-5)
    out, z = api.arithmetic(m, a, b, a, scale=1.0)
    np.testing.assert_allclose(np.asarray(z), np.asarray(2 * za - zb), rtol=1e-5, atol=1e-5)
    assert len(outs) == 3 and out.shape == (1, 8, 8, 1)


def test_bad_input_names_the_thing(image_model):
    with pytest.raises(ConfigError, match="modality='audio'"):
        diled_config("audio")
    with pytest.raises(ShapeError, match="max_len=12"):
        D.encode_text(["a sentence far too long for twelve slots"], 12)
    with pytest.raises(DataError, match="'B' at position 1"):
        D.encode_protein(["ABC"])
    with pytest.raises(ShapeError, match="latent_dim=16"):
        api.decode(image_model, jnp.zeros((2, 8)))
    with pytest.raises(ShapeError, match=r"expected \[B, 8, 8, 1\]"):
        api.encode(image_model, {"image": np.zeros((2, 9, 9, 1), np.float32)})
    with pytest.raises(ConfigError, match="denoiser.latent_dim=8"):
        DiLEDConfig("image", diled_config("image").ae, MLPSkipNetConfig(8, hidden=8, num_layers=2))


def test_presets_construct_and_round_trip_through_the_checkpoint_record():
    from jaxlm.diled.task import config_from_dict
    from jaxlm.train.config import to_dict

    for mod in ("text", "image", "protein"):
        for size in ("tiny", "paper"):
            c = diled_config(mod, size)
            assert config_from_dict(to_dict(c)) == c, (mod, size)
    paper = diled_config("text", "paper")
    assert (paper.latent_dim, paper.loss.num_steps, paper.loss.ddpm_weight, paper.ae.max_len) == (128, 1000, 8.0, 32)
    assert (paper.denoiser.hidden, paper.denoiser.num_layers) == (2048, 20)
    assert diled_config("protein", "paper").latent_dim == 30 and diled_config("protein").joint_regressor
    with pytest.raises(ConfigError, match=r"objective='vae' with modality='protein' needs ae.learned_variance=True"):
        diled_config("protein").replace(objective="vae")


def test_protein_vae_baseline_adds_a_log_variance_head_and_trains_the_fitness_head():
    """vae_config(protein): the same networks plus a log-variance head; loss = rec + kl_weight * KL + fitness MSE
    (the joint_regressor term every protein model trains); the DiLED preset has no head and says so."""
    import dataclasses

    from jaxlm.models.diled.model import DiLED, loss_jit, vae_config

    base = diled_config("protein")
    cfg = vae_config(base, 0.1)
    assert (cfg.objective, cfg.kl_weight, cfg.ae.learned_variance, cfg.joint_regressor) == ("vae", 0.1, True, True)
    abstract = nnx.eval_shape(lambda: DiLED(base, rngs=nnx.Rngs(0)))
    assert "to_logvar" not in nnx.to_pure_dict(nnx.state(abstract))["ae"]
    with pytest.raises(ConfigError, match="learned_variance=False"):
        abstract.ae.encode_stats({"tokens": jnp.zeros((2, 20), jnp.int32)})
    small = dataclasses.replace(cfg.ae.encoder, num_layers=1, hidden_size=32, intermediate_size=32)
    rng = np.random.default_rng(0)
    g, st = nnx.split(nnx.eval_shape(lambda: DiLED(cfg.replace(ae=dataclasses.replace(cfg.ae, encoder=small, hidden=32)),
                                                   rngs=nnx.Rngs(0))))
    st = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.2, x.shape), x.dtype), st)   # no init compile
    batch = {"tokens": jnp.asarray(rng.integers(0, 22, (4, 20)), jnp.int32),
             "fitness": jnp.asarray(rng.normal(size=4), jnp.float32)}
    total, m = loss_jit(g, st, batch, jax.random.key(0))
    assert set(m) == {"rec", "kl", "fitness_mse"} and float(m["kl"]) > 0
    np.testing.assert_allclose(float(total), float(m["rec"] + 0.1 * m["kl"] + m["fitness_mse"]), rtol=1e-6)
