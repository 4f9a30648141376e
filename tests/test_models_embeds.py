"""Language models fed input embeddings (the shared LMShell): `embeds=` instead of ids, ids after `prefix_embeds=`,
through the model call, the pure entry points (forward / forward_cached) and generation prefill; shape errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import preset
from jaxlm.errors import PromptTooLongError, ShapeError
from jaxlm.infer.generate import Generator
from jaxlm.models import KVCache, forward, forward_cached
from jaxlm.models.decoder import DecoderLM

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def smol():
    # a larger init std than training's makes logits peaked, so greedy choices are far from ties
    return DecoderLM(preset("smollm2-tiny", init_std=0.3), rngs=nnx.Rngs(3))


def test_embeds_give_bit_identical_logits(smol):
    g, st = nnx.split(smol)
    ids = jnp.asarray(RNG.integers(0, 256, (2, 10)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(forward(g, st, None, embeds=smol.embed_tokens(ids))),
                                  np.asarray(forward(g, st, ids)))


def test_embeds_with_scales_and_prefix_positions():
    # muP embed and logit scales (CrystalCoder's switches) are part of the shell; same shapes as `smol` (cheap build)
    model = DecoderLM(preset("smollm2-tiny", init_std=0.3, embed_scale=3.0, logit_scale=0.5), rngs=nnx.Rngs(0))
    g, st = nnx.split(model)
    ids = jnp.asarray(RNG.integers(0, 256, (2, 10)), jnp.int32)

    @jax.jit  # one compile for every call below (the entry points are inlined)
    def run(st, ids):
        emb = nnx.merge(g, st).embed_tokens(ids)
        full = forward(g, st, ids)
        via_embeds = forward(g, st, None, embeds=emb)
        # [prefix; tokens]: positions continue after the prefix
        with_prefix = forward(g, st, ids[:, 4:], prefix_embeds=emb[:, :4])
        # cached: prefill the prefix and 4 tokens, then decode 2 tokens from the cache
        lg, cache = forward_cached(g, st, ids[:, 4:8], KVCache.zeros(model.cfg, 2, 16), prefix_embeds=emb[:, :4])
        steps = []
        for t in (8, 9):
            out, cache = forward_cached(g, st, ids[:, t:t + 1], cache)
            steps.append(out[:, 0])
        return full, via_embeds, with_prefix, lg, cache.lengths, jnp.stack(steps, 1)

    full, via_embeds, with_prefix, lg, lengths, steps = map(np.asarray, run(st, ids))
    np.testing.assert_array_equal(via_embeds, full)  # no second scale, cast or norm on the embeds path
    assert with_prefix.shape == (2, 10, 256) and lg.shape == (2, 8, 256) and lengths.tolist() == [10, 10]
    np.testing.assert_allclose(with_prefix, full, atol=1e-5, rtol=0)
    np.testing.assert_allclose(lg, full[:, :8], atol=1e-5, rtol=0)
    np.testing.assert_allclose(steps, full[:, 8:], atol=1e-4, rtol=0)


def test_prefix_prefill_then_greedy_decode_equals_full_forward(smol):
    model = smol
    D = model.cfg.hidden_size
    prompts = [[5, 6, 7], [9, 10], [], [11, 12, 13, 14]]
    prefixes = [RNG.standard_normal((3, D)).astype(np.float32), RNG.standard_normal((5, D)).astype(np.float32),
                RNG.standard_normal((4, D)).astype(np.float32), None]  # ragged prefixes, an empty prompt, none
    got = Generator(model).generate_ids(prompts, max_new_tokens=6, prefix_embeds=prefixes)

    # reference: the full forward over [prefix; tokens] recomputed for every new token (one padded width; causal
    # attention makes the right padding invisible), argmax at the last real position
    gd, st = nnx.split(model)
    fwd = jax.jit(lambda st, e: nnx.merge(gd, st)(embeds=e))
    table = np.asarray(model.embed[...])  # smollm2: no embed scale, float32
    for prompt, pre, out in zip(prompts, prefixes, got):
        seq = list(prompt)
        for _ in range(6):
            e = np.concatenate([np.zeros((0, D), np.float32) if pre is None else pre, table[seq]])
            e = np.pad(e, ((0, 32 - len(e)), (0, 0)))[None]
            seq.append(int(jnp.argmax(fwd(st, jnp.asarray(e))[0, len(seq) + (0 if pre is None else len(pre)) - 1])))
        assert out == seq[len(prompt):]


def test_bad_input_shapes_name_the_shape(smol):
    model = smol
    ids = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(ShapeError, match=r"neither input_ids \[B, T\] nor embeds \[B, T, 64\]"):
        model()
    with pytest.raises(ShapeError, match=r"embeds has shape \(2, 4, 63\); expected \[B, T, 64\]"):
        model(embeds=jnp.zeros((2, 4, 63)))
    with pytest.raises(ShapeError, match=r"embeds has shape \(2, 4\)"):
        model(embeds=jnp.zeros((2, 4)))
    with pytest.raises(ShapeError, match="not both"):
        model(ids, embeds=jnp.zeros((2, 4, 64)))
    with pytest.raises(ShapeError, match=r"prefix_embeds has shape \(1, 3, 64\) but the inputs after it have batch 2"):
        model(ids, prefix_embeds=jnp.zeros((1, 3, 64)))
    with pytest.raises(ShapeError, match=r"input_ids has shape \(4,\)"):
        model(jnp.zeros((4,), jnp.int32))
    g = Generator(model, context_len=32)
    with pytest.raises(ShapeError, match=r"prefix_embeds has shape \(3, 10\); expected \[P, 64\]"):
        g.generate_ids([[1]], max_new_tokens=2, prefix_embeds=[np.zeros((3, 10))])
    with pytest.raises(ShapeError, match="2 entries for 1 prompts"):
        g.generate_ids([[1]], max_new_tokens=2, prefix_embeds=[None, None])
    with pytest.raises(PromptTooLongError, match="20 prefix embeddings and 10 tokens .* 38 in total"):
        g.generate_ids([list(range(10))], max_new_tokens=8, prefix_embeds=[np.zeros((20, 64))])


def test_shell_is_shared_and_recurrent_prefix_prefill():
    """Mamba-2 and Phi-Mamba take the same inputs (one LMShell); a recurrent cache prefills [prefix; tokens] (one
    group of equal lengths, no padding) and decodes from its state like the full forward recomputed each step."""
    from jaxlm.models import LMShell
    from jaxlm.models.mamba2 import Mamba2LM
    from jaxlm.models.phi_mamba import PhiMambaLM

    assert issubclass(PhiMambaLM, LMShell) and issubclass(Mamba2LM, LMShell) and issubclass(DecoderLM, LMShell)
    m = Mamba2LM(preset("mamba2-tiny", init_std=0.3), rngs=nnx.Rngs(0))
    pre = RNG.standard_normal((2, 2, 64)).astype(np.float32)
    prompts = [[1, 2, 3], [4, 5, 6]]
    got = Generator(m).generate_ids(prompts, max_new_tokens=2, prefix_embeds=list(pre))
    gd, st = nnx.split(m)
    fwd = jax.jit(lambda st, ids: nnx.merge(gd, st)(ids, prefix_embeds=jnp.asarray(pre)))
    seqs = [list(p) for p in prompts]
    for _ in range(2):  # right padding to one width: the recurrence is causal, it cannot reach back
        ids = np.zeros((2, 8), np.int32)
        ids[:, :len(seqs[0])] = seqs
        nxt = np.asarray(jnp.argmax(fwd(st, jnp.asarray(ids))[:, 2 + len(seqs[0]) - 1], -1))
        seqs = [s + [int(t)] for s, t in zip(seqs, nxt)]
    assert got == [s[3:] for s in seqs]
