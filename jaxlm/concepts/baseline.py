"""Baseline: a linear rank-based latent-hierarchy learner run on the same discrete data.

It is the same bottom-up procedure (structure.py) with the linear-model view of the data: every variable
is the scalar of its integer code and ranks are ranks of ordinary covariance matrices, so a latent is a
one-dimensional factor, sibling classes are found from rank-1 (tetrad) constraints and no cardinality is
estimated (every latent is reported with 2 states). This is the single-latent-cover special case of the
rank-constraint methods for linear latent hierarchies (Huang et al. 2022, "Latent hierarchical causal
structure discovery with rank constraints"; RLCD). It is exact when each latent is binary (then
E[code | latent] is affine in a one-dimensional latent) and breaks down for latents with more states,
the gap the discrete rank conditions close."""

from __future__ import annotations

import numpy as np

from jaxlm.concepts.dgp import DiscreteBN
from jaxlm.concepts.rank import BartlettRank, OracleRank, RobustRank
from jaxlm.concepts.structure import LearnedStructure, learn_structure


def learn_linear_baseline(source, cards=None, names=None, alpha: float = 0.01, method: str = "bartlett",
                          max_parents: int = 2) -> LearnedStructure:
    """source: a DiscreteBN (population covariances of the codes) or an (n, m) array of category codes."""
    if isinstance(source, DiscreteBN):
        g = source.graph
        test = OracleRank(source, feature="code")
        names = [g.names[i] for i in g.observed_idx] if names is None else names
    else:
        cls = RobustRank if method == "robust" else BartlettRank
        test = cls(np.asarray(source), cards, alpha=alpha, feature="code")
    return learn_structure(test, names, max_parents=max_parents, parent_rule=False,
                           repair=not isinstance(source, DiscreteBN))
