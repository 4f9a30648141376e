"""Rank tests on joint probability tables (jaxlm.concepts.rank): exact ranks match the separating-set
bound, the sampled tests' type-I error is near the nominal level, and bad input is refused clearly."""

import numpy as np
import pytest

from jaxlm.concepts import (BartlettRank, ConceptDataError, DiscreteBN, OracleRank, RobustRank, SVDRank,
                            type1_error)
from jaxlm.concepts.graphs import _spec

ALPHA, DRAWS = 0.05, 200
# binomial tolerance: 3 standard deviations of a rejection rate over DRAWS nulls
TOL = 3 * np.sqrt(ALPHA * (1 - ALPHA) / DRAWS)


def _bn(g, seed=0):
    return DiscreteBN.random(g, np.random.default_rng(seed))


def test_oracle_rank_is_the_separator_bound():
    # H (3 states) -> a, b, c, d (4 states each): any split of the children is separated by H
    bn = _bn(_spec({"H": (3, ["a", "b", "c", "d"])}, obs_card=4))
    o = OracleRank(bn)
    assert o.table_rank((0, 1), (2, 3)) == 3
    assert o.table_rank((0,), (1,)) == 3
    # two independent latents: a-b depend through H1, c-d through H2, nothing across
    bn2 = _bn(_spec({"H1": (2, ["a", "b"]), "H2": (3, ["c", "d"])}))
    o2 = OracleRank(bn2)
    assert o2.rank((0,), (2, 3)) == 0 and o2.rank((0,), (1,)) == 1 and o2.rank((2,), (3,)) == 2
    # the joint of children of two different latents has the additive rank (2-1) + (3-1)
    assert o2.rank((0, 2), (1, 3)) == 3


def test_sample_moments_converge_to_population():
    bn = _bn(_spec({"H": (3, ["a", "b", "c"])}))
    x = bn.sample_observed(200_000, np.random.default_rng(1))
    rho_pop = OracleRank(bn).correlations((0, 1), (2,))[0]
    rho_smp = BartlettRank(x, (3, 3, 3)).correlations((0, 1), (2,))[0]
    np.testing.assert_allclose(rho_smp, rho_pop, atol=0.01)
    exact = bn.marginal((1, 2, 3))  # nodes a, b, c (node 0 is H)
    freq = np.zeros((3, 3, 3))
    np.add.at(freq, tuple(x.T), 1)
    np.testing.assert_allclose(freq / len(x), exact, atol=0.005)


def test_bartlett_type1_error_at_independence():
    # A = {a, b} (children of H1) and B = {c, d} (children of H2) are independent: true rank 0
    bn = _bn(_spec({"H1": (2, ["a", "b"]), "H2": (2, ["c", "d"])}))
    rate = type1_error(bn, (0, 1), (2, 3), 0, n=1000, draws=DRAWS, rng=np.random.default_rng(3), alpha=ALPHA)
    assert abs(rate - ALPHA) <= TOL, rate


def test_robust_type1_error_under_a_latent_class_null():
    # A = {a} (4 states) and B = {b, c} share a 3-state latent: true covariance rank 2 < min(p=3, q=4)
    bn = _bn(_spec({"H": (3, ["a", "b", "c"])}, obs_card={"a": 4}))
    rng = np.random.default_rng(4)
    rate = type1_error(bn, (0,), (1, 2), 2, n=1000, draws=DRAWS, rng=rng, alpha=ALPHA, method="robust")
    assert abs(rate - ALPHA) <= TOL, rate
    # Bartlett's Gaussian approximation is conservative here (the residual is smaller than it assumes)
    rate_b = type1_error(bn, (0,), (1, 2), 2, n=1000, draws=DRAWS, rng=rng, alpha=ALPHA)
    assert rate_b <= ALPHA + TOL, rate_b


def test_tests_have_power():
    bn = _bn(_spec({"H": (3, ["a", "b", "c", "d"])}))
    x = bn.sample_observed(3000, np.random.default_rng(5))
    for test in (BartlettRank(x, alpha=0.01), RobustRank(x, alpha=0.01), SVDRank(x)):
        assert test.rank((0, 1), (2, 3)) == 2, type(test).__name__
    # and the wrong null is rejected
    assert BartlettRank(x).pvalue((0, 1), (2, 3), 1) < 1e-6


def test_bad_input_is_refused():
    x = np.random.default_rng(0).integers(0, 3, size=(500, 3))
    with pytest.raises(ConceptDataError, match="non-integer"):
        BartlettRank(x + 0.5)
    with pytest.raises(ConceptDataError, match="too few"):
        BartlettRank(x[:10])
    with pytest.raises(ConceptDataError, match="cardinality 1"):
        BartlettRank(np.c_[x, np.zeros(500, dtype=int)])
    with pytest.raises(ConceptDataError, match="cardinality"):
        BartlettRank(x, cards=(3, 3, 1))
    with pytest.raises(ConceptDataError, match=">= its cardinality"):
        BartlettRank(x, cards=(3, 2, 3))
    with pytest.raises(ConceptDataError, match="negative"):
        BartlettRank(x - 1)
    with pytest.raises(ConceptDataError, match="2-D"):
        BartlettRank(x[:, 0])
    with pytest.raises(ConceptDataError, match="disjoint"):
        BartlettRank(x).rank((0, 1), (1, 2))
    with pytest.raises(ConceptDataError, match="more samples than dimensions"):
        BartlettRank(np.random.default_rng(1).integers(0, 6, size=(40, 4)), (6,) * 4, min_samples=30).rank((0, 1), (2, 3))
    # integral floats are accepted as codes
    assert BartlettRank(x.astype(float)).rank((0,), (1,)) >= 0
