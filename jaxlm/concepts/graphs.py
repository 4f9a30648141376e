"""Latent hierarchical DAGs over discrete variables: the graph type, the seven preset families, random
hierarchies, the minimal-graph operator and the identifiability conditions the learner relies on.

A `LatentDAG` is a DAG whose nodes are discrete variables with a cardinality (number of states); some nodes
are observed (the bottom-level concepts d, or discrete variables at any level), the others are latent.
Edges point from the more abstract concept to the less abstract one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxlm.concepts.errors import ConceptGraphError


@dataclasses.dataclass(frozen=True)
class LatentDAG:
    names: tuple[str, ...]
    parents: tuple[tuple[int, ...], ...]   # parents[i] = indices of i's parents
    card: tuple[int, ...]
    observed: tuple[bool, ...]

    def __post_init__(self):
        n = len(self.names)
        if not (len(self.parents) == len(self.card) == len(self.observed) == n):
            raise ConceptGraphError(f"LatentDAG: names/parents/card/observed lengths differ "
                                    f"({n}, {len(self.parents)}, {len(self.card)}, {len(self.observed)})")
        if len(set(self.names)) != n:
            raise ConceptGraphError(f"LatentDAG: duplicate node names in {self.names}")
        for i, (ps, k) in enumerate(zip(self.parents, self.card)):
            if int(k) != k or k < 2:
                raise ConceptGraphError(f"LatentDAG: node {self.names[i]!r} has cardinality {k}; every "
                                        "variable needs at least 2 states")
            for p in ps:
                if not 0 <= p < n or p == i:
                    raise ConceptGraphError(f"LatentDAG: node {self.names[i]!r} has invalid parent index {p}")
        self.topological_order()  # raises on a cycle

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_edges(cls, edges, card: dict, observed) -> "LatentDAG":
        """edges: iterable of (parent, child) names; card: name -> states; observed: names that are observed.
        Node order: the keys of `card`."""
        names = tuple(card)
        index = {nm: i for i, nm in enumerate(names)}
        parents = [[] for _ in names]
        for p, c in edges:
            for nm in (p, c):
                if nm not in index:
                    raise ConceptGraphError(f"LatentDAG.from_edges: edge ({p!r}, {c!r}) names {nm!r}, "
                                            "which has no cardinality in `card`")
            parents[index[c]].append(index[p])
        obs = set(observed)
        unknown = obs - set(names)
        if unknown:
            raise ConceptGraphError(f"LatentDAG.from_edges: observed names {sorted(unknown)} are not nodes")
        return cls(names, tuple(tuple(sorted(set(ps))) for ps in parents), tuple(int(card[n]) for n in names),
                   tuple(n in obs for n in names))

    # ------------------------------------------------------------------ queries
    @property
    def n(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConceptGraphError(f"LatentDAG: no node named {name!r}") from None

    def children(self, i: int) -> tuple[int, ...]:
        return tuple(j for j in range(self.n) if i in self.parents[j])

    def pure_children(self, i: int) -> tuple[int, ...]:
        return tuple(j for j in self.children(i) if self.parents[j] == (i,))

    @property
    def latent_idx(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n) if not self.observed[i])

    @property
    def observed_idx(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n) if self.observed[i])

    @property
    def edges(self) -> frozenset[tuple[str, str]]:
        return frozenset((self.names[p], self.names[c]) for c in range(self.n) for p in self.parents[c])

    def topological_order(self) -> tuple[int, ...]:
        indeg = [len(ps) for ps in self.parents]
        kids = [[] for _ in range(self.n)]
        for c, ps in enumerate(self.parents):
            for p in ps:
                kids[p].append(c)
        order, ready = [], [i for i in range(self.n) if indeg[i] == 0]
        while ready:
            i = ready.pop(0)
            order.append(i)
            for c in kids[i]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    ready.append(c)
        if len(order) != self.n:
            raise ConceptGraphError(f"LatentDAG: the edges contain a cycle among "
                                    f"{[self.names[i] for i in range(self.n) if i not in order]}")
        return tuple(order)

    def observed_descendants(self, i: int) -> frozenset[str]:
        out, stack, seen = set(), [i], set()
        while stack:
            j = stack.pop()
            for c in self.children(j):
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
                    if self.observed[c]:
                        out.add(self.names[c])
        return frozenset(out)

    def describe(self) -> str:
        lines = []
        for i in self.topological_order():
            kids = ", ".join(self.names[c] for c in self.children(i))
            kind = "obs" if self.observed[i] else "lat"
            lines.append(f"{self.names[i]}[{kind},{self.card[i]}] -> {kids or '-'}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- minimal graph and conditions
def minimal_graph(g: LatentDAG) -> LatentDAG:
    """The minimal-graph operator (our reconstruction, see docs/concepts.md): repeatedly remove a latent
    that has no children, and absorb a latent with exactly one child (its parents become the child's
    parents). Such latents leave no rank signature, so a rank-based learner can only recover the graph
    up to this operator; metrics compare against minimal_graph(truth)."""
    edges = set(g.edges)
    card = {g.names[i]: g.card[i] for i in range(g.n)}
    observed = {g.names[i] for i in g.observed_idx}
    changed = True
    while changed:
        changed = False
        for lat in [n for n in card if n not in observed]:
            kids = [c for p, c in edges if p == lat]
            if len(kids) <= 1:
                pars = [p for p, c in edges if c == lat]
                edges = {(p, c) for p, c in edges if lat not in (p, c)}
                edges |= {(p, k) for p in pars for k in kids}
                del card[lat]
                changed = True
    return LatentDAG.from_edges(edges, card, observed)


def check_conditions(g: LatentDAG) -> list[str]:
    """The sufficient conditions under which learn_structure recovers minimal_graph(g) from exact rank
    information (our reconstruction of the paper's conditions, docs/concepts.md). Returns the violated
    conditions as readable strings; an empty list means the graph is covered."""
    bad = []
    if len(g.observed_idx) < 3:
        bad.append(f"only {len(g.observed_idx)} observed variables (need >= 3)")
    for i in g.observed_idx:
        if g.children(i):
            bad.append(f"observed {g.names[i]} has children (the learner assumes observed variables are leaves)")
    for i in g.latent_idx:
        nm, k = g.names[i], g.card[i]
        pure = g.pure_children(i)
        if len(pure) < 2:
            bad.append(f"latent {nm} has {len(pure)} pure children (need >= 2)")
        if len(g.children(i)) + len(g.parents[i]) < 3:
            bad.append(f"latent {nm} has {len(g.children(i)) + len(g.parents[i])} neighbours (need >= 3)")
        for c in pure:
            if g.card[c] < k:
                bad.append(f"pure child {g.names[c]} of {nm} has {g.card[c]} < {k} states")
    for i in range(g.n):
        ps = g.parents[i]
        if len(ps) > 2:
            bad.append(f"{g.names[i]} has {len(ps)} parents (the learner handles at most 2)")
        if len(ps) >= 2:
            for p in ps:
                if g.card[i] <= g.card[p]:
                    bad.append(f"multi-parent node {g.names[i]} needs more states than its parent "
                               f"{g.names[p]} ({g.card[i]} <= {g.card[p]})")
            if any(g.observed[p] for p in ps):
                bad.append(f"{g.names[i]} has an observed parent")
    return bad


# ---------------------------------------------------------------------- presets
def _spec(latents: dict[str, tuple[int, list[str]]], obs_card=3) -> LatentDAG:
    """latents: name -> (states, children); every child that is not a latent is observed, with
    obs_card states (an int, or a dict name -> states with default 3)."""
    card, edges = {}, []
    for nm, (k, _) in latents.items():
        card[nm] = k
    obs = []
    for nm, (_, kids) in latents.items():
        for c in kids:
            edges.append((nm, c))
            if c not in latents and c not in obs:
                obs.append(c)
    for c in obs:
        card[c] = obs_card.get(c, 3) if isinstance(obs_card, dict) else obs_card
    return LatentDAG.from_edges(edges, card, obs)


PRESETS = {
    # (a) a two-level latent tree
    "tree": lambda: _spec({
        "R": (2, ["H1", "H2", "H3"]),
        "H1": (3, ["x1", "x2", "x3"]), "H2": (3, ["x4", "x5"]), "H3": (3, ["x6", "x7"])}),
    # (b) a three-level latent tree
    "deep_tree": lambda: _spec({
        "R": (2, ["M1", "M2", "M3"]),
        "M1": (3, ["H1", "H2"]), "M2": (3, ["H3", "H4"]), "M3": (3, ["H5", "x11", "x12"]),
        "H1": (4, ["x1", "x2"]), "H2": (4, ["x3", "x4"]), "H3": (4, ["x5", "x6"]),
        "H4": (4, ["x7", "x8"]), "H5": (4, ["x9", "x10"])}, obs_card=4),
    # (c) observed concepts attached to a higher-level latent (cross-level edges)
    "cross_level": lambda: _spec({
        "R": (2, ["H1", "H2", "x7", "x8"]),
        "H1": (3, ["x1", "x2", "x3"]), "H2": (3, ["x4", "x5", "x6"])}),
    # (d) an observed concept with two latent parents (two paths from the root)
    "multi_parent_observed": lambda: _spec({
        "R": (2, ["H1", "H2", "H3"]),
        "H1": (3, ["x1", "x2", "x7"]), "H2": (3, ["x3", "x4", "x7"]), "H3": (3, ["x5", "x6"])},
        obs_card={"x7": 4}),
    # (e) a diamond: a latent with two latent parents (multi-path multi-level DAG)
    "diamond": lambda: _spec({
        "R": (2, ["H1", "H2", "H4"]),
        "H1": (3, ["x1", "x2", "H3"]), "H2": (3, ["x3", "x4", "H3"]), "H3": (4, ["x5", "x6"]),
        "H4": (3, ["x7", "x8"])}, obs_card={"x5": 4, "x6": 4}),
    # (f) a latent that is the parent of another latent and of observed concepts (non-tree levels)
    "latent_chain": lambda: _spec({
        "R": (2, ["H1", "x1", "x2"]),
        "H1": (3, ["H2", "x3", "x4"]), "H2": (4, ["x5", "x6"])}, obs_card={"x5": 4, "x6": 4}),
    # (extra) a binary latent tree: every latent has 2 states, where the linear baseline is also exact
    "binary_tree": lambda: _spec({
        "R": (2, ["H1", "H2", "H3"]),
        "H1": (2, ["x1", "x2", "x3"]), "H2": (2, ["x4", "x5"]), "H3": (2, ["x6", "x7"])}, obs_card=2),
    # (g) everything at once: 3 latent levels, a multi-parent latent, a multi-parent observed concept and a
    #     cross-level observed concept
    "mixed": lambda: _spec({
        "R": (2, ["M1", "M2", "x13"]),
        "M1": (3, ["H1", "H2"]), "M2": (3, ["H3", "H4"]),
        "H1": (4, ["x1", "x2", "x12"]), "H2": (4, ["x3", "x4", "H5"]), "H3": (4, ["x5", "x6", "H5"]),
        "H4": (4, ["x7", "x8", "x12"]), "H5": (5, ["x9", "x10"])},
        obs_card={**{f"x{i}": 4 for i in range(1, 9)}, "x9": 5, "x10": 5, "x12": 5, "x13": 3}),
}


def preset(name: str) -> LatentDAG:
    if name not in PRESETS:
        raise ConceptGraphError(f"unknown concept-graph preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def preset_names() -> list[str]:
    return list(PRESETS)


# ---------------------------------------------------------------------- random hierarchies
def random_hierarchy(rng: np.random.Generator, n_levels: int = 2, n_top: int = 3, children=(2, 3),
                     p_cross: float = 0.0, p_multi: float = 0.0, base_card: int = 2) -> LatentDAG:
    """A random latent hierarchy: one root, `n_top` latents below it, each latent with children drawn
    from `children` (a range of counts), `n_levels` latent levels below the root; cardinalities grow by one
    per level going down (root has base_card states) so the direction condition holds. With probability
    p_cross a latent also gets an observed child directly (cross-level edge); with probability p_multi an
    extra observed child shared with a sibling latent (a multi-parent, multi-path node) is added.
    n_top = 2 gives a root with two neighbours, which violates check_conditions (a useful negative case)."""
    if n_levels < 1 or n_top < 2:
        raise ConceptGraphError(f"random_hierarchy: need n_levels >= 1 and n_top >= 2 (got {n_levels}, {n_top})")
    latents: dict[str, tuple[int, list[str]]] = {"R": (base_card, [])}
    obs_card: dict[str, int] = {}
    counter = {"H": 0, "x": 0}

    def new(kind):
        counter[kind] += 1
        return f"{kind}{counter[kind]}"

    frontier = []
    for _ in range(n_top):
        h = new("H")
        latents[h] = (base_card + 1, [])
        latents["R"][1].append(h)
        frontier.append(h)
    for level in range(1, n_levels + 1):
        nxt = []
        for h in frontier:
            k = latents[h][0]
            n_kids = int(rng.integers(children[0], children[-1] + 1))
            for _ in range(n_kids):
                if level < n_levels:
                    c = new("H")
                    latents[c] = (k + 1, [])
                    nxt.append(c)
                else:
                    c = new("x")
                    obs_card[c] = k
                latents[h][1].append(c)
        if level < n_levels:
            for h in frontier:
                if rng.random() < p_cross:
                    c = new("x")
                    obs_card[c] = n_levels + base_card
                    latents[h][1].append(c)
        frontier = nxt or frontier
    bottom = [h for h in latents if h != "R" and not any(c in latents for c in latents[h][1])]
    if p_multi > 0 and len(bottom) >= 2:
        for a, b in zip(bottom[::2], bottom[1::2]):
            if rng.random() < p_multi:
                c = new("x")
                obs_card[c] = max(latents[a][0], latents[b][0]) + 1
                latents[a][1].append(c)
                latents[b][1].append(c)
    return _spec(latents, obs_card=obs_card)
