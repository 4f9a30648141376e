"""Pandora's modules: presets, bad input (before any compute), and the deterministic multi-round rollout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.errors import ConfigError, PromptTooLongError, RequestError, ShapeError
from jaxlm.config import pandora_preset
from jaxlm.pandora.model import WorldModel, check_config, encode_actions

CFG = pandora_preset("pandora-test")


@pytest.fixture(scope="module")
def abstract_model():
    """Shapes only (no init compute): enough for every check that runs before the model does."""
    return nnx.eval_shape(lambda: WorldModel(CFG, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def model(abstract_model):
    """Host-drawn random weights (N(0, 0.05), no zero-initialised gates): skips the init's XLA compile."""
    g, st = nnx.split(abstract_model)
    rng = np.random.default_rng(0)
    pure = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape).astype(x.dtype)), nnx.to_pure_dict(st))
    nnx.replace_by_pure_dict(st, pure)
    return nnx.merge(g, st)


def frames(b=2, t=2, s=16, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, t, s, s, c)).astype(np.uint8)


def test_presets_construct_and_agree():
    tiny, paper = pandora_preset("pandora-tiny"), pandora_preset("pandora-paper")
    assert tiny.llm_weights == "smollm2" and tiny.llm.hidden_size == 576 and tiny.llm.num_layers == 4
    assert (paper.num_queries, paper.adapter_queries, paper.context_dim, paper.llm.hidden_size) == (64, 77, 1024, 4096)
    for c in (tiny, paper, CFG):
        check_config(c)
    with pytest.raises(ConfigError, match="pandora-nope"):
        pandora_preset("pandora-nope")


def test_adapter_video_width_mismatch_is_named():
    with pytest.raises(ConfigError, match="adapter_out_dim=48.*context_dim=32"):
        WorldModel(CFG.replace(adapter_out_dim=48), rngs=nnx.Rngs(0))


def test_bad_frames_name_the_argument(abstract_model):
    m = abstract_model
    with pytest.raises(ShapeError, match="initial_frames.*frame_size=16"):
        m.rollout(frames(s=20), ["go left"])
    with pytest.raises(ShapeError, match="initial_frames.*3\\] RGB"):
        m.rollout(frames(c=4), ["go left"])
    with pytest.raises(ShapeError, match="before"):
        m.step(frames(t=1), ["a", "b"])
    with pytest.raises(ShapeError, match="dtype int64"):
        m.rollout(frames().astype(np.int64), ["go left"])


def test_bad_actions_name_the_field(abstract_model):
    m = abstract_model
    with pytest.raises(RequestError, match=r"actions\[1\]=''"):
        m.rollout(frames(), ["go left", ""])
    with pytest.raises(PromptTooLongError, match=r"actions\[0\].*max_action_tokens=32"):
        m.rollout(frames(), ["walk " * 20])
    with pytest.raises(RequestError, match="non-empty list"):
        m.rollout(frames(), "go left")
    with pytest.raises(PromptTooLongError, match="5 rounds exceeds.*max_rounds=4"):
        m.rollout(frames(), ["go left"] * 5)
    with pytest.raises(RequestError, match="one per row"):
        m.step(frames(), ["only one"])


def test_encode_actions_pads_and_masks():
    from jaxlm.io.tokenizer import ByteTokenizer

    ids, mask = encode_actions(ByteTokenizer(), ["ab", "xyz"], 4)
    assert ids.tolist() == [[97, 98, 0, 0], [120, 121, 122, 0]] and mask.sum(1).tolist() == [2, 3]


def check_rollout(model, mode, single=False):
    x = frames()
    acts = ["go left", "pick up the key"]
    a = model.rollout(x, acts, seed=3, mode=mode)
    assert a.shape == (2, CFG.context_frames + 2 * CFG.clip_len, 16, 16, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a[:, :2], x.astype(np.float32) / 127.5 - 1.0)  # the initial state comes first
    assert np.array_equal(a, model.rollout(x, acts, seed=3, mode=mode))  # fixed seed, eta = 0: bit-identical
    b = model.rollout(x, acts, seed=4, mode=mode)
    assert not np.allclose(a[:, 2:], b[:, 2:])  # the seed draws the initial noise
    if single:  # an unbatched state gives an unbatched rollout (another compile: batch 1)
        one = model.rollout(x[0], acts, seed=3, mode=mode)
        assert one.shape == a.shape[1:] and np.allclose(one, a[0], atol=1e-5)
    return a


def test_rollout_is_deterministic_for_a_fixed_seed(model):
    """The multi-round loop, DDIM (eta = 0) and CFG on the bag-of-words conditioning (the compile without the LLM)."""
    check_rollout(model, "bow")


@pytest.mark.slow
def test_rollout_through_the_llm_is_deterministic(model):
    a = check_rollout(model, "llm", single=True)
    # the action reaches the frames through LLM -> queries -> Q-Former -> cross-attention
    other = model.rollout(frames(), ["turn right", "drop it"], seed=3)
    assert not np.allclose(a[:, 2:], other[:, 2:])


def test_residual_target_round_trips_and_copy_is_zero():
    """The video model diffuses target_scale x (clip - last context frame): copying the last frame is the zero
    target, and clip_from_target inverts clip_target (clipped to [-1, 1]); without `residual` the clip is scaled."""
    from jaxlm.pandora.model import clip_from_target, clip_target, target_range

    x = frames(t=4, seed=1).astype(np.float32) / 127.5 - 1.0
    before, after = jnp.asarray(x[:, :2]), jnp.asarray(x[:, 2:])
    for c in (CFG, CFG.replace(residual=False, target_scale=2.0)):
        y = clip_target(c, before, after)
        assert float(jnp.abs(y).max()) <= target_range(c) + 1e-6
        np.testing.assert_allclose(np.asarray(clip_from_target(c, before, y)), x[:, 2:], atol=1e-6)
    copy = jnp.broadcast_to(before[:, -1:], after.shape)
    assert float(jnp.abs(clip_target(CFG, before, copy)).max()) == 0.0


def test_context_frames_stay_in_place_on_channels():
    """The video model's channel-concatenated condition: pixel (h, w) carries each context frame's own (h, w)."""
    from jaxlm.pandora.video import frames_on_channels

    f = np.arange(2 * 3 * 4 * 5 * 3, dtype=np.float32).reshape(2, 3, 4, 5, 3)
    out = np.asarray(frames_on_channels(jnp.asarray(f)))
    assert out.shape == (2, 1, 4, 5, 9)
    np.testing.assert_array_equal(out[1, 0, 2, 3], f[1, :, 2, 3].reshape(-1))


def test_adapter_input_norm_standardizes_massive_features():
    """init_input_norm (ActNorm-style): one massive, nearly constant feature (as in a decoder's residual stream)
    is shifted and scaled to mean 0 / std ~1 per feature, and the forward then equals the un-normalised adapter's
    forward on the standardised states; a wrong width is a ShapeError."""
    from jaxlm.pandora.qformer import QFormerAdapter

    def adapter():
        return QFormerAdapter(16, 8, num_out=4, dim=16, depth=1, heads=2, rngs=nnx.Rngs(0))

    x = np.random.default_rng(0).normal(0, 0.25, (32, 4, 16)).astype(np.float32)
    x[..., 3] += 20.0
    ad, plain = adapter(), adapter()
    np.testing.assert_array_equal(np.asarray(ad(jnp.asarray(x))), np.asarray(plain(jnp.asarray(x))))  # identity
    mu, scale = ad.init_input_norm(jnp.asarray(x))
    z = (x - np.asarray(mu)) * np.asarray(scale)
    assert np.abs(z.mean((0, 1))).max() < 1e-4
    sd = z.std((0, 1))
    assert 0.95 < sd.min() and sd.max() <= 1.0, sd
    np.testing.assert_allclose(np.asarray(ad(jnp.asarray(x))), np.asarray(plain(jnp.asarray(z))), atol=1e-5)
    with pytest.raises(ShapeError, match=r"init_input_norm.*\[B, N, 16\]"):
        ad.init_input_norm(jnp.zeros((2, 4, 15)))
