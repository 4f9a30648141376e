"""Bottom-up rank-based discovery of a discrete latent hierarchy (our reconstruction of the structure
procedure of Kong et al. 2024; docs/concepts.md lists the deviations and guesses).

Every round works on an *active set* W of nodes (first the observed variables; later discovered
latents plus nodes still waiting for a parent). A node is represented by its *proxy* (an observed
descendant reached through pure children, whose states carry the node's full rank) and its *members*
(all observed variables below it through pure-child edges). With r(A; B) the covariance rank between the
joint features of A's proxies and the observed set B (rank.py):

1. multi-parent children: a node c whose dependence on the rest is screened off by two latents {h1, h2}
   of W, r(p_h1 p_h2 c; R) == r(p_h1 p_h2; R), and whose dependence on them is not a single bottleneck,
   r(p_c; p_h1 p_h2) > max_i r(p_c; p_hi), becomes a child of both (R: the members of W \\ {c}).
2. siblings: u, v in W share one latent parent that screens them off from the members R of W \\ {u, v}
   iff r(u; R) == r(v; R) == r(uv; R) >= 1 (one latent of k states bounds every one of these by k - 1,
   two separate parents make r(uv; R) grow to about r(u) + r(v)). Sibling classes must be cliques.
   With sampled ranks (repair=True) r(uv; R) <= r(u; R) is accepted too (the population never has <), and
   non-clique classes are split into cliques instead of raising.
3. each class G gets a parent of k = 1 + max_g r(p_g; members(G \\ g)) states. A latent member L of G
   with k states is that parent (a latent-to-latent edge, no new node) if it passes the parent test: L
   screens off another member u together with one of L's own members m from all the rest,
   r(p_u m; rest) <= k - 1 (a new latent above L would leave u's path to the rest open). Two members
   passing make the direction ambiguous (NotIdentifiable); none passing creates a new latent.
4. repeat on the new active set until one node remains; two dependent nodes left are joined parent ->
   child when the direction is determined by their cardinalities. No progress with more than one active
   node raises NotIdentifiable: the rank pattern does not fit the conditions, and no graph is returned.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from jaxlm.concepts.dgp import DiscreteBN
from jaxlm.concepts.errors import ConceptDataError, NotIdentifiable
from jaxlm.concepts.graphs import LatentDAG
from jaxlm.concepts.rank import BartlettRank, OracleRank, RobustRank, SVDRank, single_thread_blas


@dataclasses.dataclass
class _Node:
    name: str
    latent: bool
    card: int
    members: frozenset
    proxy: tuple


@dataclasses.dataclass(frozen=True)
class LearnedStructure:
    observed: tuple[str, ...]
    latents: tuple[str, ...]
    card: dict
    edges: frozenset
    level: dict          # latent name -> the round that created it (1 = from observed variables)
    n_tests: int
    certified: dict = dataclasses.field(default_factory=dict)
    # latent name -> True when some rank test had room above the estimated cardinality (so the estimate is
    # exact); False when every test was saturated by its children's states (the estimate is a lower bound)

    def to_dag(self) -> LatentDAG:
        card = {**{o: self.card[o] for o in self.observed}, **{h: self.card[h] for h in self.latents}}
        return LatentDAG.from_edges(self.edges, card, self.observed)


class _Learner:
    def __init__(self, test, names, max_parents: int, parent_rule: bool, repair: bool = False,
                 strict_cardinality: bool = False, compact: bool = False):
        self.t, self.names = test, tuple(names)
        self.compact = compact
        self.max_parents, self.parent_rule = max_parents, parent_rule
        self.repair, self.strict_cardinality = repair, strict_cardinality
        self.certified = {}
        self.onehot = getattr(test, "feature", "onehot") == "onehot"
        self.nodes = {nm: _Node(nm, False, int(k), frozenset([j]), (j,))
                      for j, (nm, k) in enumerate(zip(self.names, test.cards))}
        self.edges, self.level, self.n_tests, self._cache = set(), {}, 0, {}
        self._fresh = 0

    # ------------------------------------------------------------------ ranks
    def r(self, a, b) -> int:
        a, b = tuple(sorted(a)), tuple(sorted(b))
        key = (a, b)
        if key not in self._cache:
            self.n_tests += 1
            self._cache[key] = self.t.rank(a, b)
        return self._cache[key]

    def proxy(self, names):
        return tuple(sorted(set().union(*[self.nodes[n].proxy for n in names])))

    def members(self, names):
        return frozenset().union(*[self.nodes[n].members for n in names]) if names else frozenset()

    def context(self, names):
        """The observed set the screening tests condition against: all members of `names`, or (compact) only
        their proxies, which keeps the feature dimension (and the tests' degrees of freedom) small."""
        return frozenset(self.proxy(names)) if self.compact and names else self.members(names)

    # ------------------------------------------------------------------ steps
    def impure(self, active):
        """Step 1: {child: (h1, h2)} for multi-parent children among `active`."""
        if self.max_parents < 2:
            return {}
        latents = [n for n in active if self.nodes[n].latent]
        found = {}
        for c in active:
            rest = [n for n in active if n != c]
            hits = []
            for s in itertools.combinations([h for h in latents if h != c], 2):
                a = self.proxy(s)
                big = self.context(rest) - set(a)
                if not big:
                    continue
                pc = self.proxy([c])
                if (self.r(a + pc, big) > self.r(a, big)) if self.repair else (self.r(a + pc, big) != self.r(a, big)):
                    continue
                joint = self.r(pc, a)
                if joint > max(self.r(pc, self.proxy([h])) for h in s) and joint >= 1:
                    hits.append(s)
            if len(hits) > 1:
                raise NotIdentifiable(f"{c} is screened off by several latent pairs {hits}", active,
                                      self.partial())
            if hits:
                found[c] = hits[0]
        # a node assigned as a child cannot also be a parent in the same round (that would close a cycle)
        accepted, parents = {}, set()
        for c, s in found.items():
            if c not in parents and not set(s) & set(accepted):
                accepted[c] = s
                parents |= set(s)
        return accepted

    def siblings(self, active):
        """Step 2: sibling classes (lists of names, size >= 2)."""
        pairs = set()
        for u, v in itertools.combinations(active, 2):
            big = self.context([n for n in active if n not in (u, v)])
            if not big:
                continue
            ru, rv = self.r(self.proxy([u]), big), self.r(self.proxy([v]), big)
            if ru < 1 or ru != rv:  # unequal single ranks also mark a latent above another one
                continue
            ruv = self.r(self.proxy([u, v]), big)
            # r(uv) >= r(u) in the population; sampled ranks (repair mode) may underestimate r(uv)
            if (ruv <= ru) if self.repair else (ruv == ru):
                pairs.add((u, v))
        adj = {n: set() for n in active}
        for u, v in pairs:
            adj[u].add(v)
            adj[v].add(u)
        seen, classes = set(), []
        for n in active:
            if n in seen or not adj[n]:
                continue
            comp, stack = {n}, [n]
            while stack:
                for m in adj[stack.pop()]:
                    if m not in comp:
                        comp.add(m)
                        stack.append(m)
            seen |= comp
            broken = [(u, v) for u, v in itertools.combinations(sorted(comp), 2) if v not in adj[u]]
            if not broken:
                classes.append([m for m in active if m in comp])
            elif not self.repair:
                raise NotIdentifiable(f"sibling relation is not transitive in {sorted(comp)} "
                                      f"({broken[0][0]} and {broken[0][1]} are not siblings)", active,
                                      self.partial())
            else:  # sampled ranks: split the component into cliques, largest degree first
                left = set(comp)
                while len(left) >= 2:
                    seed = max(sorted(left), key=lambda m: len(adj[m] & left))
                    clique = {seed}
                    for m in sorted(adj[seed] & left, key=lambda m: -len(adj[m] & left)):
                        if all(m in adj[c] for c in clique):
                            clique.add(m)
                    if len(clique) < 2:
                        break
                    classes.append([m for m in active if m in clique])
                    left -= clique
        return classes

    def _capacity(self, a, b) -> int:
        cards = self.t.cards
        return min(int(np.prod([cards[i] for i in a])) - 1, sum(cards[i] - 1 for i in b))

    def cardinality(self, cls, active):
        """(states, certified): 1 + the largest rank between members of the class and everything else
        (all are screened off by the class parent); certified when some test was not saturated."""
        if not self.onehot:
            return 2, False
        outside = self.members([m for m in active if m not in cls])
        tests = [(self.proxy([g]), self.members([m for m in cls if m != g]) | outside) for g in cls]
        if len(cls) >= 3:
            tests.append((self.proxy(cls[:2]), self.members(cls[2:]) | outside))
        best, free = 0, False
        for a, b in tests:
            b = b - set(a)
            rk = self.r(a, b)
            best = max(best, rk)
            free |= rk < self._capacity(a, b)
        return best + 1, free

    def is_parent(self, lat, cls, active) -> bool:
        """Does the existing latent `lat` (with as many states as the class rank) screen off a sibling u and
        one of its own members m from everything else? Then it is the parent of its class; a new latent P
        above `lat` would leave the path u - P - (the rest) open and raise the rank."""
        node = self.nodes[lat]
        if len(node.members) < 2:
            return False
        u = next(m for m in cls if m != lat)
        m1 = min(node.members - set(node.proxy)) if node.members - set(node.proxy) else min(node.members)
        a = self.proxy([u]) + (m1,)
        rest = (node.members - {m1}) | self.members([m for m in cls if m not in (lat, u)]) | \
            self.members([m for m in active if m not in cls])
        return self.r(a, rest - set(a)) <= node.card - 1

    def new_latent(self, card, kids, rnd):
        self._fresh += 1
        name = f"L{self._fresh}"
        while name in self.nodes:
            self._fresh += 1
            name = f"L{self._fresh}"
        best = max(kids, key=lambda n: (self.nodes[n].card, -len(self.nodes[n].proxy)))
        proxy = self.nodes[best].proxy
        if self.nodes[best].card < card:
            second = max((n for n in kids if n != best), key=lambda n: self.nodes[n].card)
            proxy = tuple(sorted(set(proxy) | set(self.nodes[second].proxy)))
        self.nodes[name] = _Node(name, True, card, self.members(kids), proxy)
        self.level[name] = rnd
        for k in kids:
            self.edges.add((name, k))
        return name

    def partial(self):
        lat = [n for n, v in self.nodes.items() if v.latent]
        return LearnedStructure(self.names, tuple(lat), {n: v.card for n, v in self.nodes.items()},
                                frozenset(self.edges), dict(self.level), self.n_tests, dict(self.certified))

    # ------------------------------------------------------------------ loop
    def run(self) -> LearnedStructure:
        active = list(self.names)
        rnd = 0
        while len(active) > 1:
            rnd += 1
            progress = False
            for c, s in self.impure(active).items():
                for h in s:
                    self.edges.add((h, c))
                active.remove(c)
                progress = True
            nxt = list(active)
            for cls in self.siblings(active):
                k, certified = self.cardinality(cls, active)
                same = [m for m in cls if self.nodes[m].latent and self.nodes[m].card == k
                        and self.is_parent(m, cls, active)] if self.parent_rule else []
                if len(same) > 1:
                    raise NotIdentifiable(f"{same} each pass the parent test for their sibling class {cls}: "
                                          "the direction of the latent edges is ambiguous", active, self.partial())
                if same:
                    parent = same[0]
                    self.certified[parent] = self.certified[parent] or certified
                    for m in cls:
                        if m != parent:
                            self.edges.add((parent, m))
                            self.nodes[parent].members |= self.nodes[m].members
                    nxt = [m for m in nxt if m not in cls or m == parent]
                else:
                    name = self.new_latent(k, cls, rnd)
                    self.certified[name] = certified
                    if self.strict_cardinality and not certified:
                        raise NotIdentifiable(f"the cardinality of the parent of {cls} is only bounded below "
                                              f"by {k}: every rank test was saturated by its children's states",
                                              active, self.partial())
                    pos = min(nxt.index(m) for m in cls)
                    nxt = [m for m in nxt if m not in cls]
                    nxt.insert(pos, name)
                progress = True
            active = nxt
            if not progress:
                if len(active) == 2:
                    self.join_pair(active)
                    active = []
                    break
                raise NotIdentifiable(f"no rank deficiency explains the {len(active)} active nodes in round {rnd} "
                                      "(a latent with too few pure children or too few states for its "
                                      "children, or a structure outside the procedure's conditions)", active,
                                      self.partial())
        return self.partial()

    def join_pair(self, active):
        u, v = active
        if self.r(self.proxy([u]), self.members([v])) < 1:
            raise NotIdentifiable(f"the last two nodes {u} and {v} are independent", active, self.partial())
        nu, nv = self.nodes[u], self.nodes[v]
        cand = [(a, b) for a, b in ((nu, nv), (nv, nu))
                if a.latent and (not b.latent or a.card < b.card)]
        if len(cand) != 1:
            raise NotIdentifiable(f"the last two nodes {u} ({nu.card} states) and {v} ({nv.card} states) can be "
                                  "joined either way", active, self.partial())
        a, b = cand[0]
        self.edges.add((a.name, b.name))


def learn_structure(test, names=None, max_parents: int = 2, parent_rule: bool = True, repair: bool = False,
                    strict_cardinality: bool = False, compact: bool = False) -> LearnedStructure:
    """Run the procedure with a rank test (OracleRank, BartlettRank, RobustRank, SVDRank) over its observed
    variables, named `names` (default x0, x1, ...). Raises NotIdentifiable rather than guess.

    repair: split a non-transitive sibling relation into cliques instead of raising (for sampled ranks,
    where single test errors are expected); strict_cardinality: raise when a latent's cardinality is only
    a lower bound (see LearnedStructure.certified); compact: screen against the proxies of the other active
    nodes instead of all their members (fewer degrees of freedom for sampled tests)."""
    cards = getattr(test, "cards", None)
    if not cards:
        raise ConceptDataError("learn_structure: the rank test has no variables")
    names = tuple(names) if names is not None else tuple(f"x{j}" for j in range(len(cards)))
    if len(names) != len(cards):
        raise ConceptDataError(f"learn_structure: {len(names)} names for {len(cards)} variables")
    if len(cards) < 3:
        raise NotIdentifiable(f"only {len(cards)} observed variables (need >= 3)")
    with single_thread_blas():
        return _Learner(test, names, max_parents, parent_rule, repair, strict_cardinality, compact).run()


def learn_oracle(bn: DiscreteBN, **kw) -> LearnedStructure:
    """Exact (population) rank information from a DiscreteBN; names are the graph's observed names."""
    g = bn.graph
    return learn_structure(OracleRank(bn, tol=kw.pop("tol", 1e-10)), [g.names[i] for i in g.observed_idx], **kw)


_METHODS = {"bartlett": BartlettRank, "robust": RobustRank, "svd": SVDRank}


def learn_from_samples(x, cards=None, names=None, method: str = "bartlett", alpha: float = 0.01,
                       repair: bool = True, **kw) -> LearnedStructure:
    """Sample ranks (method 'bartlett', 'robust' or 'svd') from an (n, m) array of category codes. alpha is
    per test (the procedure runs ~100-400 tests, so it is smaller than the usual 0.05)."""
    if method not in _METHODS:
        raise ConceptDataError(f"learn_from_samples: method must be one of {sorted(_METHODS)} (got {method!r})")
    test = _METHODS[method](x, cards, **({} if method == "svd" else {"alpha": alpha}))
    return learn_structure(test, names, repair=repair, **kw)


def node_levels(g: LatentDAG) -> np.ndarray:
    """Height of each node above the observed leaves (0 for observed), for reporting."""
    h = np.zeros(g.n, dtype=int)
    for i in reversed(g.topological_order()):
        kids = g.children(i)
        h[i] = 0 if not kids else 1 + max(h[c] for c in kids)
    return h
