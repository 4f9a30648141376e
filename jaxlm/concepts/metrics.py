"""Metrics: structure recovery up to relabelling of latents (edge precision/recall/F1, SHD, cardinality
recovery) and concept recovery (Hungarian-matched accuracy, ARI, NMI), numpy + scipy only."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from jaxlm.concepts.errors import ConceptDataError
from jaxlm.concepts.graphs import LatentDAG


def match_latents(true: LatentDAG, learned: LatentDAG) -> dict[str, str]:
    """learned latent name -> true latent name, matching latents by their observed-descendant sets
    (Hungarian assignment on Jaccard similarity; pairs with no overlap stay unmatched). Both graphs must
    have the same observed names."""
    if set(true.names[i] for i in true.observed_idx) != set(learned.names[i] for i in learned.observed_idx):
        raise ConceptDataError("match_latents: the graphs have different observed variables")
    tl, ll = true.latent_idx, learned.latent_idx
    if not tl or not ll:
        return {}
    td = [true.observed_descendants(i) for i in tl]
    ld = [learned.observed_descendants(i) for i in ll]
    sim = np.array([[len(a & b) / max(len(a | b), 1) for a in td] for b in ld])
    rows, cols = linear_sum_assignment(-sim)
    return {learned.names[ll[r]]: true.names[tl[c]] for r, c in zip(rows, cols) if sim[r, c] > 0}


def relabel(learned: LatentDAG, mapping: dict[str, str], avoid=()) -> LatentDAG:
    """Rename learned latents by `mapping`; unmatched latents get fresh names not in `avoid`."""
    taken = set(mapping.values()) | set(avoid)
    names = {}
    fresh = 0
    for i in range(learned.n):
        nm = learned.names[i]
        if learned.observed[i]:
            names[nm] = nm
        elif nm in mapping:
            names[nm] = mapping[nm]
        else:
            fresh += 1
            while f"_extra{fresh}" in taken:
                fresh += 1
            names[nm] = f"_extra{fresh}"
    card = {names[learned.names[i]]: learned.card[i] for i in range(learned.n)}
    edges = {(names[p], names[c]) for p, c in learned.edges}
    obs = {names[learned.names[i]] for i in learned.observed_idx}
    return LatentDAG.from_edges(edges, card, obs)


def structure_scores(true: LatentDAG, learned: LatentDAG | None) -> dict:
    """Directed-edge precision/recall/F1, SHD (missing + extra + reversed edges, a reversal counted once),
    latent-count error and the fraction of true latents recovered with the right cardinality.
    learned=None (a NotIdentifiable answer) scores as an empty graph."""
    te = set(true.edges)
    if learned is None:
        return dict(precision=0.0, recall=0.0, f1=0.0, shd=len(te), n_latent_true=len(true.latent_idx),
                    n_latent_learned=0, card_acc=0.0, exact=False)
    lab = relabel(learned, match_latents(true, learned), avoid=true.names)
    le = set(lab.edges)
    tp = len(te & le)
    prec = tp / len(le) if le else 0.0
    rec = tp / len(te) if te else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    rev = {(p, c) for p, c in le - te if (c, p) in te}
    shd = len(te - le) + len(le - te) - len(rev)
    tcard = {true.names[i]: true.card[i] for i in true.latent_idx}
    lcard = {lab.names[i]: lab.card[i] for i in lab.latent_idx}
    card_acc = float(np.mean([lcard.get(n) == k for n, k in tcard.items()])) if tcard else 1.0
    return dict(precision=prec, recall=rec, f1=f1, shd=shd, n_latent_true=len(tcard),
                n_latent_learned=len(lcard), card_acc=card_acc, exact=(shd == 0 and card_acc == 1.0))


# ---------------------------------------------------------------------- concept recovery
def _contingency(a, b):
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ConceptDataError(f"label arrays differ in length ({a.shape[0]} vs {b.shape[0]})")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    c = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(c, (ai, bi), 1)
    return c


def matched_accuracy(true, pred) -> float:
    """Accuracy after the best one-to-one relabelling of predicted clusters (Hungarian)."""
    c = _contingency(true, pred)
    r, k = linear_sum_assignment(-c)
    return float(c[r, k].sum() / c.sum())


def adjusted_rand_index(true, pred) -> float:
    c = _contingency(true, pred)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    n = c.sum()
    sij = comb(c).sum()
    sa, sb = comb(c.sum(1)).sum(), comb(c.sum(0)).sum()
    expected = sa * sb / comb(n)
    top = (sa + sb) / 2
    return 1.0 if top == expected else float((sij - expected) / (top - expected))


def normalized_mutual_info(true, pred) -> float:
    """NMI with the arithmetic-mean normalisation (sklearn's default)."""
    c = _contingency(true, pred).astype(np.float64)
    p = c / c.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
    if ha == 0 and hb == 0:
        return 1.0
    return mi / ((ha + hb) / 2) if ha + hb > 0 else 0.0
