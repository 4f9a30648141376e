"""Sampling stages against transformers' logits processors, the draw's distribution, seeds, parameter validation."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from jaxlm.infer.sampling import (SamplingError, SamplingFlags, SamplingParams, min_p_mask, pack_params,
                                  process_logits, repetition_penalty, row_keys, sample, seen_from_ids, top_k_mask,
                                  top_p_mask, uniforms)

RNG = np.random.default_rng(0)
LOGITS = (RNG.standard_normal((4, 50)) * 2.5).astype(np.float32)


def hf(proc, logits, ids=None):
    ids = torch.zeros((logits.shape[0], 1), dtype=torch.long) if ids is None else torch.as_tensor(ids)
    return proc(ids, torch.as_tensor(logits.copy())).numpy()


def same_mask(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    keep = ~np.isinf(ours)
    np.testing.assert_allclose(ours[keep], theirs[keep], rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 17])
def test_top_k_matches_transformers(k):
    ours = top_k_mask(jnp.asarray(LOGITS), jnp.full((4,), k, jnp.int32))
    same_mask(ours, hf(TopKLogitsWarper(k), LOGITS))
    assert (~np.isinf(np.asarray(ours))).sum(-1).tolist() == [k] * 4
    np.testing.assert_array_equal(top_k_mask(jnp.asarray(LOGITS), jnp.zeros(4, jnp.int32)), LOGITS)  # 0 = off


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_top_p_matches_transformers(p):
    same_mask(top_p_mask(jnp.asarray(LOGITS), jnp.full((4,), p)), hf(TopPLogitsWarper(p), LOGITS))
    np.testing.assert_array_equal(top_p_mask(jnp.asarray(LOGITS), jnp.ones(4)), LOGITS)


@pytest.mark.parametrize("m", [0.01, 0.2, 0.9])
def test_min_p_matches_transformers(m):
    same_mask(min_p_mask(jnp.asarray(LOGITS), jnp.full((4,), m)), hf(MinPLogitsWarper(m), LOGITS))
    np.testing.assert_array_equal(min_p_mask(jnp.asarray(LOGITS), jnp.zeros(4)), LOGITS)


def test_repetition_penalty_matches_transformers():
    ids = RNG.integers(0, 50, (4, 12))
    seen = seen_from_ids(jnp.asarray(ids), jnp.full((4,), 12), 50)
    for pen in (1.3, 0.7):
        ours = repetition_penalty(jnp.asarray(LOGITS), seen, jnp.full((4,), pen))
        np.testing.assert_allclose(ours, hf(RepetitionPenaltyLogitsProcessor(pen), LOGITS, ids), rtol=1e-6)
    # right padding beyond the true length is not "seen"
    short = seen_from_ids(jnp.asarray(ids), jnp.asarray([3, 12, 12, 12]), 50)
    assert np.asarray(short[0]).sum() == len(set(ids[0, :3].tolist()))


def test_pipeline_matches_transformers_order():
    ps = [SamplingParams(temperature=0.7, top_k=20, top_p=0.8, min_p=0.05, repetition_penalty=1.2)] * 4
    ids = RNG.integers(0, 50, (4, 6))
    seen = seen_from_ids(jnp.asarray(ids), jnp.full((4,), 6), 50)
    ours = process_logits(jnp.asarray(LOGITS), {k: jnp.asarray(v) for k, v in pack_params(ps).items()},
                          SamplingFlags.of(ps), seen)
    x = LOGITS
    for proc in (RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.7), TopKLogitsWarper(20),
                 TopPLogitsWarper(0.8), MinPLogitsWarper(0.05)):
        x = hf(proc, x, ids)
    same_mask(ours, x)


def test_per_row_settings_in_one_batch():
    ps = [SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=1.0, top_p=0.5),
          SamplingParams(temperature=1.0, min_p=0.3), SamplingParams()]
    out = np.asarray(process_logits(jnp.asarray(LOGITS), {k: jnp.asarray(v) for k, v in pack_params(ps).items()},
                                    SamplingFlags.of(ps)))
    same_mask(out[0:1], hf(TopKLogitsWarper(2), LOGITS[0:1]))
    same_mask(out[1:2], hf(TopPLogitsWarper(0.5), LOGITS[1:2]))
    same_mask(out[2:3], hf(MinPLogitsWarper(0.3), LOGITS[2:3]))
    np.testing.assert_allclose(out[3], LOGITS[3])


def test_draws_follow_the_distribution_and_the_masks():
    n, V = 20000, 6
    logits = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.07, 0.03], np.float32))
    batch = jnp.broadcast_to(jnp.asarray(logits), (n, V))
    ps = [SamplingParams(temperature=1.0)] * n
    P = {k: jnp.asarray(v) for k, v in pack_params(ps).items()}
    keys = row_keys(np.arange(n))
    toks = np.asarray(sample(batch, P, SamplingFlags.of(ps), keys, jnp.full((n,), 7, jnp.int32)))
    freq = np.bincount(toks, minlength=V) / n
    np.testing.assert_allclose(freq, np.exp(logits), atol=0.015)
    # same seeds, same position -> same tokens; another position -> other tokens
    again = np.asarray(sample(batch, P, SamplingFlags.of(ps), keys, jnp.full((n,), 7, jnp.int32)))
    other = np.asarray(sample(batch, P, SamplingFlags.of(ps), keys, jnp.full((n,), 8, jnp.int32)))
    np.testing.assert_array_equal(toks, again)
    assert (toks != other).mean() > 0.4
    # top-k 2 never draws outside the two best tokens
    ps2 = [SamplingParams(temperature=1.0, top_k=2)] * n
    P2 = {k: jnp.asarray(v) for k, v in pack_params(ps2).items()}
    t2 = np.asarray(sample(batch, P2, SamplingFlags.of(ps2), keys, jnp.zeros((n,), jnp.int32)))
    assert set(np.unique(t2).tolist()) == {0, 1}
    assert abs((t2 == 0).mean() - 0.4 / 0.65) < 0.015
    u = np.asarray(uniforms(keys[:4], jnp.zeros(4, jnp.int32), 1000))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02


def test_greedy_rows_take_the_argmax():
    ps = [SamplingParams(), SamplingParams(temperature=0.0, repetition_penalty=2.0)]
    P = {k: jnp.asarray(v) for k, v in pack_params(ps).items()}
    seen = jnp.zeros((2, 50), bool).at[1, int(LOGITS[1].argmax())].set(True)
    out = np.asarray(sample(jnp.asarray(LOGITS[:2]), P, SamplingFlags.of(ps), row_keys([0, 0]),
                            jnp.zeros(2, jnp.int32), seen))
    assert out[0] == LOGITS[0].argmax()
    penalised = np.asarray(repetition_penalty(jnp.asarray(LOGITS[1:2]), seen[1:2], jnp.asarray([2.0])))
    assert out[1] == penalised.argmax()


@pytest.mark.parametrize("kw, field", [
    (dict(temperature=-0.1), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(min_p=-0.1), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(seed=-1), "seed"),
    (dict(temperature=float("nan")), "temperature"), (dict(temperature="hot"), "temperature"),
])
def test_invalid_parameters_name_the_field(kw, field):
    with pytest.raises(SamplingError, match=field):
        SamplingParams(**kw)
