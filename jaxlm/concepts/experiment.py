"""The synthetic structure-recovery benchmark (the paper's table shape: F1 per graph, ours vs the linear
baseline, oracle and sampled) and the type-I calibration numbers. Pure numpy; a recipe can call these and
write the tables (python -m jaxlm.concepts.experiment prints them)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxlm.concepts.baseline import learn_linear_baseline
from jaxlm.concepts.dgp import DiscreteBN
from jaxlm.concepts.errors import NotIdentifiable
from jaxlm.concepts.graphs import _spec, minimal_graph, preset, preset_names
from jaxlm.concepts.metrics import structure_scores
from jaxlm.concepts.rank import type1_error
from jaxlm.concepts.structure import learn_from_samples, learn_oracle


def _score(truth, fn):
    """Scores of one run; a NotIdentifiable answer scores as the empty graph (F1 0) and is counted."""
    try:
        s = structure_scores(truth, fn().to_dag())
        s["ni"] = False
    except NotIdentifiable:
        s = structure_scores(truth, None)
        s["ni"] = True
    return s


def run_synthetic(presets=None, ns=(1000, 5000, 20000), seeds=(0, 1, 2), method: str = "bartlett",
                  alpha: float = 0.01, boost: float = 4.0):
    """Rows: dict(graph, n ('oracle' or a sample size), learner ('ours'/'baseline'), f1, shd, card_acc, ni,
    seconds), averaged over seeds (ni: fraction of NotIdentifiable answers)."""
    rows = []
    for name in presets or preset_names():
        g = preset(name)
        truth = minimal_graph(g)
        obs = g.observed_idx
        names, cards = [g.names[i] for i in obs], [g.card[i] for i in obs]
        for n in ("oracle",) + tuple(ns):
            acc = {"ours": [], "baseline": []}
            t0 = time.perf_counter()
            for seed in seeds:
                bn = DiscreteBN.random(g, np.random.default_rng(seed), boost=boost)
                if n == "oracle":
                    acc["ours"].append(_score(truth, lambda: learn_oracle(bn)))
                    acc["baseline"].append(_score(truth, lambda: learn_linear_baseline(bn)))
                    continue
                x = bn.sample_observed(int(n), np.random.default_rng(1000 + seed))
                acc["ours"].append(_score(truth, lambda: learn_from_samples(x, cards, names, method=method,
                                                                            alpha=alpha)))
                acc["baseline"].append(_score(truth, lambda: learn_linear_baseline(x, cards, names, alpha=alpha)))
            secs = (time.perf_counter() - t0) / len(seeds)
            for learner, runs in acc.items():
                rows.append(dict(graph=name, n=n, learner=learner,
                                 f1=float(np.mean([r["f1"] for r in runs])),
                                 shd=float(np.mean([r["shd"] for r in runs])),
                                 card_acc=float(np.mean([r["card_acc"] for r in runs])),
                                 ni=float(np.mean([r["ni"] for r in runs])), seconds=secs))
    return rows


def table(rows) -> str:
    """Markdown: one row per graph, columns F1 ours / baseline for each sample size."""
    graphs = list(dict.fromkeys(r["graph"] for r in rows))
    ns = list(dict.fromkeys(r["n"] for r in rows))
    head = "| graph | " + " | ".join(f"{n} ours | {n} base" for n in ns) + " |"
    sep = "|---|" + "---|" * (2 * len(ns))
    lines = [head, sep]
    get = {(r["graph"], r["n"], r["learner"]): r for r in rows}
    for g in graphs:
        cells = []
        for n in ns:
            for who in ("ours", "baseline"):
                r = get[(g, n, who)]
                cells.append(f"{r['f1']:.2f}" + (f" ({r['ni']:.0%} NI)" if r["ni"] else ""))
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration(draws: int = 200, n: int = 1000, alpha: float = 0.05, seed: int = 0):
    """Type-I error of each test on two nulls: independence (rank 0) and a latent-class null (rank 2)."""
    rng = np.random.default_rng(seed)
    indep = DiscreteBN.random(_spec({"H1": (2, ["a", "b"]), "H2": (2, ["c", "d"])}), rng)
    lclass = DiscreteBN.random(_spec({"H": (3, ["a", "b", "c"])}, obs_card={"a": 4}), rng)
    out = {}
    for method in ("bartlett", "robust", "svd"):
        out[(method, "rank0")] = type1_error(indep, (0, 1), (2, 3), 0, n, draws, rng, alpha, method)
        out[(method, "rank2")] = type1_error(lclass, (0,), (1, 2), 2, n, draws, rng, alpha, method)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ns", default="1000,5000,20000")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--method", default="bartlett")
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--presets", default="")
    ap.add_argument("--boost", type=float, default=4.0)
    a = ap.parse_args(argv)
    rows = run_synthetic([p for p in a.presets.split(",") if p] or None,
                         tuple(int(v) for v in a.ns.split(",") if v), tuple(range(a.seeds)), a.method, a.alpha,
                         a.boost)
    print(table(rows))
    for (method, null), rate in calibration().items():
        print(f"type-I {method:8s} {null}: {rate:.3f}")


if __name__ == "__main__":
    main()
