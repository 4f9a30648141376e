"""Real networks as a second test bed: the classic bnlearn Bayesian networks with their expert-elicited tables,
read from the BIF files that the pgmpy 1.1.2 wheel ships (pgmpy/utils/example_models/<name>.bif.gz).

`pgmpy.example_models.load_model("bnlearn/asia")` downloads even though the files are in the wheel, so it is
never called: the file is located without importing pgmpy (its import alone takes seconds) and parsed by the
small BIF reader below (`read_bif`; agrees with pgmpy's BIFReader on every bundled network, a slow test), which
touches no network (tested with sockets disabled). Internal nodes are hidden (latent) and the leaves observed,
which gives latent hierarchies with real probability tables; `hide` can name the latents instead.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np

from jaxlm.concepts.dgp import DiscreteBN
from jaxlm.concepts.errors import ConceptGraphError
from jaxlm.concepts.graphs import LatentDAG

# the bundled discrete networks small enough for exact marginals (at most 52 nodes)
NETWORKS = ("asia", "cancer", "earthquake", "survey", "sachs", "child", "insurance", "alarm")


def network_file(name: str) -> Path:
    """Path of the bundled BIF file of bnlearn network `name` inside the installed pgmpy."""
    spec = importlib.util.find_spec("pgmpy")
    if spec is None or spec.origin is None:  # the `concepts` extra
        raise ConceptGraphError("bnlearn networks need pgmpy's bundled files (pip install 'jaxlm[concepts]')")
    path = Path(spec.origin).parent / "utils" / "example_models" / f"{name}.bif.gz"
    if not path.is_file():
        raise ConceptGraphError(f"no bundled bnlearn network {name!r} (looked for {path}); known: {list(NETWORKS)}")
    return path


_VAR = re.compile(r"variable\s+(\S+)\s*\{\s*type\s+discrete\s*\[\s*(\d+)\s*\]\s*\{([^}]*)\}", re.S)
_PROB = re.compile(r"probability\s*\(\s*([^|)\s]+)\s*(?:\|\s*([^)]*))?\)\s*\{([^}]*)\}", re.S)


def read_bif(text: str, where: str = "BIF"):
    """Parse a discrete BIF network: (states {var: [state names]}, parents {var: [parents]}, tables {var: array of
    shape (*card[parents], card[var])}). Supports `table` rows of parentless variables and `(s1, s2) p, ...;`
    rows, which is what the bnlearn files use."""
    states = {m[1]: [v.strip() for v in m[3].split(",")] for m in _VAR.finditer(text)}
    for v, st in states.items():
        if not st or any(not x for x in st):
            raise ConceptGraphError(f"{where}: variable {v!r} has empty state names")
    parents, tables = {}, {}
    for m in _PROB.finditer(text):
        v, ps, body = m[1], [p.strip() for p in (m[2] or "").split(",") if p.strip()], m[3]
        unknown = [x for x in [v, *ps] if x not in states]
        if unknown:
            raise ConceptGraphError(f"{where}: probability block of {v!r} names undeclared variables {unknown}")
        shape = [len(states[p]) for p in ps] + [len(states[v])]
        tab = np.full(shape, np.nan)
        for line in body.split(";"):
            line = line.strip()
            if not line:
                continue
            if line.startswith("table"):
                vals = np.array([float(x) for x in line[5:].replace(",", " ").split()])
                if ps or vals.size != shape[-1]:
                    raise ConceptGraphError(f"{where}: unsupported table line for {v!r}: {line[:60]!r}")
                tab[...] = vals
                continue
            row = re.match(r"\(([^)]*)\)\s*(.*)", line, re.S)
            if row is None:
                raise ConceptGraphError(f"{where}: cannot read the line {line[:60]!r} of {v!r}'s table")
            cfg = [x.strip() for x in row[1].split(",")]
            try:
                idx = tuple(states[p].index(c) for p, c in zip(ps, cfg, strict=True))
            except ValueError:
                raise ConceptGraphError(f"{where}: {v!r}'s table row {cfg} names unknown parent states") from None
            tab[idx] = [float(x) for x in row[2].replace(",", " ").split()]
        if np.isnan(tab).any():
            raise ConceptGraphError(f"{where}: {v!r}'s table is incomplete")
        parents[v], tables[v] = ps, tab
    missing = set(states) - set(tables)
    if missing:
        raise ConceptGraphError(f"{where}: no probability block for {sorted(missing)}")
    return states, parents, tables


def load_network(name: str, hide="internal", measure: int = 0, rng: np.random.Generator | None = None,
                 boost: float = 4.0) -> DiscreteBN:
    """The bnlearn network as a DiscreteBN. hide="internal": nodes with children are latent, leaves observed;
    hide=() keeps every node observed; or an iterable of node names to hide.

    measure=k > 0 instead hides EVERY node of the network and gives each one k observed pure children
    ("<node>~1".."<node>~k", one more state than the node) with Dirichlet(1 + boost * e_t) tables drawn from
    `rng`: the real tables then relate the latents, and the measurement children make each latent's rank visible.
    """
    path = network_file(name)
    with gzip.open(path, "rt") as f:
        states, pars, tables = read_bif(f.read(), str(path))
    nodes = list(states)
    kids = {n: [c for c in nodes if n in pars[c]] for n in nodes}
    if hide == "internal":
        latent = {n for n in nodes if kids[n]}
    else:
        latent = set(hide)
        unknown = latent - set(nodes)
        if unknown:
            raise ConceptGraphError(f"load_network({name!r}): hide names {sorted(unknown)} are not nodes")
    card = {n: len(states[n]) for n in nodes}
    edges = [(p, c) for c in nodes for p in pars[c]]
    if measure:
        latent = set(nodes)
        for n in nodes:
            for j in range(1, measure + 1):
                card[f"{n}~{j}"] = card[n] + 1
                edges.append((n, f"{n}~{j}"))
    g = LatentDAG.from_edges(edges, card, [n for n in card if n not in latent])
    rng = rng if rng is not None else np.random.default_rng(0)
    cpts = []
    for i, n in enumerate(g.names):
        if n not in kids:  # a measurement child
            k, kp = g.card[i], g.card[g.parents[i][0]]
            conc = np.ones((kp, k))
            conc[np.arange(kp), rng.permutation(k)[:kp]] += boost
            cpts.append(np.stack([rng.dirichlet(a) for a in conc]))
            continue
        ev = pars[n]
        order = [ev.index(g.names[p]) for p in g.parents[i]]  # our parent order (sorted node indices)
        cpts.append(np.transpose(tables[n], order + [len(ev)]))
    return DiscreteBN(g, cpts)


__all__ = ["NETWORKS", "load_network", "network_file", "read_bif"]
