"""The data-generating process: Dirichlet conditional probability tables on a LatentDAG, exact population
marginals (variable elimination by einsum over the ancestors of the query), ancestral sampling, and a
simple random nonlinear mixing x = g(d, nuisance) from the bottom-level concepts to continuous
observations (the neural concept learner that inverts it is still to be built)."""

from __future__ import annotations

import functools
import string

import numpy as np

from jaxlm.concepts.errors import ConceptGraphError
from jaxlm.concepts.graphs import LatentDAG

_LETTERS = string.ascii_letters


class DiscreteBN:
    """A discrete Bayesian network on `graph`. cpt[i] has shape (*card[parents[i]], card[i]) and sums to
    one over its last axis."""

    def __init__(self, graph: LatentDAG, cpts):
        self.graph = graph
        self.cpts = [np.asarray(c, dtype=np.float64) for c in cpts]
        for i, c in enumerate(self.cpts):
            want = tuple(graph.card[p] for p in graph.parents[i]) + (graph.card[i],)
            if c.shape != want:
                raise ConceptGraphError(f"DiscreteBN: cpt of {graph.names[i]!r} has shape {c.shape}, want {want}")
            if not np.allclose(c.sum(-1), 1.0, atol=1e-9) or (c < 0).any():
                raise ConceptGraphError(f"DiscreteBN: cpt of {graph.names[i]!r} is not a conditional distribution")
        if graph.n > len(_LETTERS):
            raise ConceptGraphError(f"DiscreteBN: at most {len(_LETTERS)} nodes for exact marginals (got {graph.n})")
        self._marg = functools.lru_cache(maxsize=None)(self._marginal)

    @classmethod
    def random(cls, graph: LatentDAG, rng: np.random.Generator, alpha: float = 1.0, boost: float = 4.0):
        """Dirichlet CPTs: each row P(child | parent config) ~ Dirichlet(alpha + boost * e_t) where the
        favoured state t is a random injective-as-possible map of the parent configuration (so every
        edge carries signal; boost = 0 gives plain symmetric Dirichlet(alpha) tables). Roots get the
        symmetric Dirichlet(alpha + boost) prior."""
        cpts = []
        for i in range(graph.n):
            pshape = tuple(graph.card[p] for p in graph.parents[i])
            k = graph.card[i]
            n_cfg = int(np.prod(pshape)) if pshape else 1
            targets = np.concatenate([rng.permutation(k) for _ in range(-(-n_cfg // k))])[:n_cfg]
            conc = np.full((n_cfg, k), alpha)
            if pshape:
                conc[np.arange(n_cfg), targets] += boost
            else:  # a root: a balanced prior (a peaked one would starve every edge below it of signal)
                conc += boost
            rows = np.stack([rng.dirichlet(a) for a in conc])
            cpts.append(rows.reshape(pshape + (k,)))
        return cls(graph, cpts)

    # ------------------------------------------------------------------ exact population quantities
    def _ancestors(self, nodes) -> list[int]:
        out, stack = set(nodes), list(nodes)
        while stack:
            for p in self.graph.parents[stack.pop()]:
                if p not in out:
                    out.add(p)
                    stack.append(p)
        return sorted(out)

    def _marginal(self, nodes: tuple[int, ...]) -> np.ndarray:
        """Variable elimination in topological order over the ancestors of `nodes` (non-ancestors are
        barren and sum out to one): multiply in one table at a time and sum a variable out as soon as its
        last child inside the ancestor set has been multiplied in. Hierarchies keep the frontier small."""
        keep = set(self._ancestors(nodes))
        g = self.graph
        order = [i for i in g.topological_order() if i in keep]
        pos = {i: t for t, i in enumerate(order)}
        last_use = {i: max([pos[c] for c in g.children(i) if c in keep], default=pos[i]) for i in order}
        query = set(nodes)
        factor, axes = np.ones(()), []
        for t, i in enumerate(order):
            out = [v for v in axes + [i] if v in query or last_use[v] > t]
            factor = np.einsum(factor, axes, self.cpts[i], [*g.parents[i], i], out)
            axes = out
        return np.einsum(factor, axes, list(nodes))

    def marginal(self, nodes) -> np.ndarray:
        """Exact joint table P(X_nodes), axes in the order given (node indices or names)."""
        idx = tuple(self.graph.index(n) if isinstance(n, str) else int(n) for n in nodes)
        if len(set(idx)) != len(idx):
            raise ConceptGraphError(f"DiscreteBN.marginal: repeated nodes in {nodes}")
        return self._marg(idx)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n ancestral samples of every node: int array (n, graph.n)."""
        g = self.graph
        out = np.zeros((n, g.n), dtype=np.int64)
        for i in g.topological_order():
            ps = g.parents[i]
            table = self.cpts[i].reshape(-1, g.card[i])
            cfg = np.zeros(n, dtype=np.int64)
            for p in ps:
                cfg = cfg * g.card[p] + out[:, p]
            cum = np.cumsum(table[cfg], axis=1)
            u = rng.random((n, 1))
            out[:, i] = np.minimum((u > cum).sum(1), g.card[i] - 1)
        return out

    def sample_observed(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Samples of the observed nodes only, columns in graph.observed_idx order."""
        return self.sample(n, rng)[:, list(self.graph.observed_idx)]


def mix_observations(d: np.ndarray, cards, rng: np.random.Generator, dim: int = 32, nuisance_dim: int = 4,
                     hidden: int = 64, nuisance_scale: float = 1.0):
    """x = g(d, c): the one-hot codes of the concepts d (n, m) and a Gaussian nuisance c (n, nuisance_dim)
    pass through a random two-layer tanh network with a random output rotation (smooth, generically
    injective in (d, c) when dim is large enough). Returns (x, c)."""
    d = np.asarray(d)
    n = d.shape[0]
    onehot = np.concatenate([np.eye(k)[d[:, j]] for j, k in enumerate(cards)], axis=1)
    c = rng.normal(size=(n, nuisance_dim)) * nuisance_scale
    z = np.concatenate([onehot, c], axis=1)
    w1 = rng.normal(size=(z.shape[1], hidden)) / np.sqrt(z.shape[1])
    w2 = rng.normal(size=(hidden, dim)) / np.sqrt(hidden)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    x = np.tanh(np.tanh(z @ w1 * 2.0) @ w2 * 2.0) @ q
    return x.astype(np.float32), c
