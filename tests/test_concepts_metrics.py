"""Metrics and the data-generating process of jaxlm.concepts."""

import numpy as np
import pytest

from jaxlm.concepts import (ConceptGraphError, DiscreteBN, LatentDAG, adjusted_rand_index, check_conditions,
                            matched_accuracy, mix_observations, normalized_mutual_info, preset, random_hierarchy,
                            structure_scores)


def test_structure_scores_are_invariant_to_latent_names_and_count_errors():
    true = preset("tree")
    renamed = LatentDAG.from_edges(
        [(p.replace("H", "Z").replace("R", "Q"), c.replace("H", "Z")) for p, c in true.edges],
        {n.replace("H", "Z").replace("R", "Q"): true.card[i] for i, n in enumerate(true.names)},
        [true.names[i] for i in true.observed_idx])
    assert structure_scores(true, renamed) == dict(precision=1.0, recall=1.0, f1=1.0, shd=0, n_latent_true=4,
                                                   n_latent_learned=4, card_acc=1.0, exact=True)
    # move x3 from H1 to H2 and reverse nothing: one missing edge + one extra edge
    edges = (set(true.edges) - {("H1", "x3")}) | {("H2", "x3")}
    card = {n: true.card[i] for i, n in enumerate(true.names)}
    s = structure_scores(true, LatentDAG.from_edges(edges, card, [true.names[i] for i in true.observed_idx]))
    assert s["shd"] == 2 and s["precision"] == s["recall"] == 9 / 10
    assert structure_scores(true, None)["f1"] == 0.0


def test_concept_metrics():
    t = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([5, 5, 3, 3, 4, 4])  # a relabelling
    assert matched_accuracy(t, p) == 1.0 and adjusted_rand_index(t, p) == 1.0
    assert normalized_mutual_info(t, p) == pytest.approx(1.0)
    q = np.array([0, 1, 0, 1, 0, 1])  # independent of t
    assert normalized_mutual_info(t, q) == pytest.approx(0.0, abs=1e-12)
    assert adjusted_rand_index(t, q) < 0.0 + 1e-9
    # a known ARI value (sklearn docs example: [0,0,1,1] vs [0,0,1,2] -> 0.5714...)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.5714285714)
    assert matched_accuracy([0, 0, 1, 1], [1, 1, 1, 0]) == 0.75


def test_dgp_tables_sampling_and_mixing():
    bn = DiscreteBN.random(preset("diamond"), np.random.default_rng(0))
    g = bn.graph
    for i, c in enumerate(bn.cpts):
        np.testing.assert_allclose(c.sum(-1), 1.0)
    h3 = g.index("H3")
    assert bn.cpts[h3].shape == (3, 3, 4)
    np.testing.assert_allclose(bn.marginal(["x1", "x5"]).sum(), 1.0)
    d = bn.sample_observed(500, np.random.default_rng(1))
    assert d.shape == (500, len(g.observed_idx)) and d.min() >= 0
    assert (d.max(0) < np.array([g.card[i] for i in g.observed_idx])).all()
    x, c = mix_observations(d, [g.card[i] for i in g.observed_idx], np.random.default_rng(2), dim=16)
    assert x.shape == (500, 16) and c.shape == (500, 4) and np.isfinite(x).all()


def test_random_hierarchies_and_graph_errors():
    rng = np.random.default_rng(0)
    for _ in range(5):
        g = random_hierarchy(rng, n_levels=2, n_top=3, p_cross=0.5)
        assert check_conditions(g) == []
    with pytest.raises(ConceptGraphError, match="cycle"):
        LatentDAG.from_edges([("a", "b"), ("b", "a")], {"a": 2, "b": 2}, ["a"])
    with pytest.raises(ConceptGraphError, match="at least 2 states"):
        LatentDAG.from_edges([("a", "b")], {"a": 1, "b": 2}, ["b"])
    with pytest.raises(ConceptGraphError, match="unknown concept-graph preset"):
        preset("nope")


def test_importing_the_package_does_not_import_jax_and_the_learner_loads_on_use():
    import subprocess
    import sys

    import jaxlm.concepts as c
    from jaxlm.concepts import learner
    assert c.LearnerConfig is learner.LearnerConfig and "ConceptTask" in c.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        c.nope
    code = "import sys, jaxlm.concepts; print('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False"]
