"""Phased mixtures: empirical source fractions follow each phase's weights, phases switch at the right step,
and per-source draw counters are consistent prefix sums (what makes random access to any step possible)."""

import numpy as np
import pytest

from jaxlm.data import DataConfig, Mixture, PhaseSpec, SourceSpec, build_pipeline, default_tokenizer
from jaxlm.data.mixture import CHUNK

NAMES = ["a", "b", "c"]
PHASES = (PhaseSpec(1500, {"a": 1.0}), PhaseSpec(1500, {"a": 0.2, "b": 0.5, "c": 0.3}),
          PhaseSpec(1500, {"b": 3.0, "c": 1.0}))  # unnormalized weights are normalized


def test_empirical_fractions_follow_each_phase():
    mix = Mixture(PHASES, NAMES, global_batch=32, seed=0)
    expected = [[1, 0, 0], [0.2, 0.5, 0.3], [0, 0.75, 0.25]]
    for p, exp in enumerate(expected):
        lo = int(mix.starts[p])
        counts = np.stack([mix.counts(t) for t in range(lo, lo + PHASES[p].steps)])
        assert (counts.sum(axis=1) == 32).all()
        frac = counts.sum(axis=0) / counts.sum()
        n = counts.sum()
        for f, w in zip(frac, exp):
            assert abs(f - w) <= 4 * np.sqrt(w * (1 - w) / n) + 1e-12, (p, frac, exp)
        zero = np.asarray(exp) == 0
        assert (counts[:, zero] == 0).all()  # a source with weight 0 never appears


def test_phase_boundaries_and_after_the_last_phase():
    mix = Mixture(PHASES, NAMES, global_batch=8, seed=1)
    assert [mix.phase_at(t) for t in (0, 1499, 1500, 2999, 3000, 4499)] == [0, 0, 1, 1, 2, 2]
    assert mix.phase_at(10**6) == 2  # the last phase continues
    with pytest.raises(ValueError):
        mix.phase_at(-1)


def test_draw_counters_are_prefix_sums_across_chunks_and_phases():
    mix = Mixture(PHASES, NAMES, global_batch=16, seed=2)
    fresh = Mixture(PHASES, NAMES, global_batch=16, seed=2)
    running = np.zeros(3, np.int64)
    checkpoints = {0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 1499, 1500, 1501, 1500 + CHUNK, 2999, 3000, 4499, 4600}
    for t in range(4601):
        if t in checkpoints:
            np.testing.assert_array_equal(mix.draws_before(t), running)
            np.testing.assert_array_equal(fresh.draws_before(t), running)  # random access, no replay needed
        running += mix.counts(t)
    src, draw = mix.slots(2000)
    base = mix.draws_before(2000)
    for s in range(3):
        got = np.sort(draw[src == s])
        np.testing.assert_array_equal(got, base[s] + np.arange(mix.counts(2000)[s]))


def test_slots_are_shuffled_within_the_batch_and_seeded():
    a = Mixture(PHASES, NAMES, global_batch=32, seed=3)
    b = Mixture(PHASES, NAMES, global_batch=32, seed=3)
    c = Mixture(PHASES, NAMES, global_batch=32, seed=4)
    sa = np.stack([a.slots(t)[0] for t in range(1500, 1520)])
    np.testing.assert_array_equal(sa, np.stack([b.slots(t)[0] for t in range(1500, 1520)]))
    assert not np.array_equal(sa, np.stack([c.slots(t)[0] for t in range(1500, 1520)]))
    assert any((np.diff(row) < 0).any() for row in sa)  # not just sorted by source


def test_pipeline_switches_sources_at_the_phase_step():
    tok = default_tokenizer()
    docs = {n: SourceSpec.from_docs(tuple(f"{n} document {i}. " * 5 for i in range(40))) for n in ("x", "y")}
    cfg = DataConfig(seq_len=16, global_batch=4, seed=0, sources=docs,
                     phases=(PhaseSpec(3, {"x": 1.0}), PhaseSpec(4, {"y": 1.0}), PhaseSpec(2, {"x": 1, "y": 1})))
    pipe = build_pipeline(cfg, tok)
    assert [pipe.phase_at(t)[0] for t in range(10)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert pipe.phase_at(5)[1] is cfg.phases[1]
    ids = [pipe.next()["source_id"] for _ in range(7)]
    assert all((s == 0).all() for s in ids[:3]) and all((s == 1).all() for s in ids[3:7])
    x_word = tok.encode("x")[0]
    b = pipe.batch_at(3)
    assert x_word not in b["inputs"]  # phase 1 rows come from source y only
