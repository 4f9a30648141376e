"""Rank tests on joint probability tables of sets of discrete variables.

The quantity tested is the rank of the cross-covariance between a feature map of the *joint* state of a
variable set A and a feature map of the variables of a disjoint set B. With `feature="onehot"` (the
discrete model) A's joint state and each B variable are one-hot coded (one state dropped), so

    rank Cov(onehot(X_A), [onehot(X_b) for b in B]) <= prod_{s in S} |S_s| - 1

for every set S of variables that d-separates A from B (columns are mixtures over the states of S); the
full-table version rank P(X_A, X_B) - 1 is the same bound, and concatenating B's one-hots keeps the tables
small enough to estimate from samples. With `feature="code"` every variable is the scalar of its integer
code (the linear-model view used by the baseline): A contributes one column per variable.

Ranks are reported as covariance ranks (table rank minus one for one-hot features).

Three implementations share `canonical_correlations`:
  OracleRank    population moments from a DiscreteBN (exact marginals), numerical rank with a tolerance;
  BartlettRank  sample moments, sequential Bartlett chi-square tests of "rank <= r" at level alpha;
  SVDRank       sample moments, count of canonical correlations above a Marchenko-Pastur-like threshold.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os

import numpy as np
from scipy import stats

from jaxlm.concepts.errors import ConceptDataError

FEATURES = ("onehot", "code")


@functools.lru_cache(maxsize=1)
def _openblas_local():
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    for lib in libs:
        try:
            fn = ctypes.CDLL(lib).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
        return fn
    return None


@contextlib.contextmanager
def single_thread_blas():
    """Run numpy's OpenBLAS single-threaded in this thread: the rank tests do thousands of tiny
    eigen/SVD decompositions, where thread start-up dominates (10x slower on a busy 2-core machine)."""
    fn = _openblas_local()
    old = fn(1) if fn is not None else None
    try:
        yield
    finally:
        if fn is not None:
            fn(old)


def canonical_correlations(saa, sbb, sab, eps: float = 1e-10):
    """Canonical correlations (descending) of two blocks given their covariances, after dropping
    directions of (relative) variance below eps. Returns (rho, p_eff, q_eff)."""
    wa, wb = _inv_sqrt(saa, eps), _inv_sqrt(sbb, eps)
    if wa.shape[1] == 0 or wb.shape[1] == 0:
        return np.zeros(0), wa.shape[1], wb.shape[1]
    s = np.linalg.svd(wa.T @ sab @ wb, compute_uv=False)
    return np.clip(s, 0.0, 1.0), wa.shape[1], wb.shape[1]


def _inv_sqrt(s, eps):
    s = np.atleast_2d(s)
    if s.size == 0:
        return np.zeros((s.shape[0], 0))
    lam, u = np.linalg.eigh((s + s.T) / 2)
    keep = lam > eps * max(lam.max(), 1e-300)
    return u[:, keep] / np.sqrt(lam[keep])


def bartlett_pvalues(rho, n: int, p: int, q: int):
    """p-values of H0: rank <= r for r = 0 .. min(p,q)-1 (Bartlett's chi-square approximation to the
    likelihood ratio for canonical correlations: -(n-1-(p+q+1)/2) sum_{i>r} log(1-rho_i^2) ~ chi2((p-r)(q-r)))."""
    rho = np.asarray(rho)
    logs = np.log1p(-np.minimum(rho, 1 - 1e-12) ** 2)
    scale = n - 1 - (p + q + 1) / 2
    out = []
    for r in range(min(p, q)):
        stat = -scale * logs[r:].sum()
        out.append(float(stats.chi2.sf(stat, (p - r) * (q - r))))
    return out


class _RankBase:
    """Shared plumbing: feature moments for index sets of the observed variables."""

    feature = "onehot"
    cards: tuple[int, ...] = ()

    def _check_sets(self, a, b):
        a, b = tuple(int(i) for i in a), tuple(int(i) for i in b)
        if not a or not b:
            raise ConceptDataError(f"rank test needs two non-empty variable sets (got A={a}, B={b})")
        if set(a) & set(b) or len(set(a)) != len(a) or len(set(b)) != len(b):
            raise ConceptDataError(f"rank test needs disjoint sets without repeats (got A={a}, B={b})")
        m = len(self.cards)
        for i in a + b:
            if not 0 <= i < m:
                raise ConceptDataError(f"rank test: variable index {i} out of range (0..{m - 1})")
        return a, b

    def moments(self, a, b):
        raise NotImplementedError

    def correlations(self, a, b):
        a, b = self._check_sets(a, b)
        return canonical_correlations(*self.moments(a, b))

    def rank(self, a, b) -> int:
        raise NotImplementedError

    def table_rank(self, a, b) -> int:
        """rank P(X_A, X_B)-style: covariance rank + 1 for one-hot features."""
        return self.rank(a, b) + (1 if self.feature == "onehot" else 0)


# ---------------------------------------------------------------------- population (oracle)
class OracleRank(_RankBase):
    """Exact ranks from a DiscreteBN's population marginals over its observed variables (indices are
    positions in bn.graph.observed_idx). tol: canonical correlations above tol count toward the rank."""

    def __init__(self, bn, feature: str = "onehot", tol: float = 1e-10):
        if feature not in FEATURES:
            raise ConceptDataError(f"OracleRank: feature must be one of {FEATURES} (got {feature!r})")
        self.bn, self.feature, self.tol = bn, feature, tol
        self.obs = bn.graph.observed_idx
        self.cards = tuple(bn.graph.card[i] for i in self.obs)
        self._pair = functools.lru_cache(maxsize=None)(self._pair_cov)

    def _joint(self, nodes):
        return self.bn.marginal(tuple(self.obs[i] for i in nodes))

    def _pair_cov(self, i, j):
        """Covariance block between the per-variable features of observed i and j (i may equal j)."""
        if self.feature == "code":
            if i == j:
                p = self._joint((i,))
                v = np.arange(len(p))
                return np.array([[p @ v ** 2 - (p @ v) ** 2]])
            pij = self._joint((i, j))
            vi, vj = np.arange(pij.shape[0]), np.arange(pij.shape[1])
            return np.array([[vi @ pij @ vj - (vi @ pij.sum(1)) * (vj @ pij.sum(0))]])
        if i == j:
            p = self._joint((i,))[:-1]
            return np.diag(p) - np.outer(p, p)
        pij = self._joint((i, j))
        return pij[:-1, :-1] - np.outer(pij.sum(1)[:-1], pij.sum(0)[:-1])

    def _block(self, rows, cols):
        return np.block([[self._pair(i, j) for j in cols] for i in rows])

    def moments(self, a, b):
        sbb = self._block(b, b)
        if self.feature == "code":
            return self._block(a, a), sbb, self._block(a, b)
        pa = self._joint(a).reshape(-1)
        saa = np.diag(pa[:-1]) - np.outer(pa[:-1], pa[:-1])
        cols = []
        for j in b:
            pab = self._joint(a + (j,)).reshape(len(pa), -1)
            cols.append(pab[:-1, :-1] - np.outer(pa[:-1], pab.sum(0)[:-1]))
        return saa, sbb, np.concatenate(cols, axis=1)

    def rank(self, a, b) -> int:
        rho, _, _ = self.correlations(a, b)
        return int((rho > self.tol).sum())


# ---------------------------------------------------------------------- samples
def check_discrete(data, cards=None, min_samples: int = 50, name: str = "data"):
    """Validate an (n, m) array of category codes; returns (int64 data, cards)."""
    x = np.asarray(data)
    if x.ndim != 2:
        raise ConceptDataError(f"{name}: want a 2-D array (samples, variables) of category codes, got shape {x.shape}")
    if x.dtype == bool:
        x = x.astype(np.int64)
    if not np.issubdtype(x.dtype, np.integer):
        if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            bad = np.argwhere(~np.isfinite(x) | (x != np.round(x))) if np.issubdtype(x.dtype, np.floating) else None
            where = f" (first at row {bad[0][0]}, column {bad[0][1]})" if bad is not None and len(bad) else ""
            raise ConceptDataError(f"{name}: rank tests need discrete category codes, got non-integer values of "
                                   f"dtype {x.dtype}{where}")
    x = x.astype(np.int64)
    n, m = x.shape
    if n < min_samples:
        raise ConceptDataError(f"{name}: {n} samples is too few for a rank test (need >= {min_samples})")
    if (x < 0).any():
        j = int(np.argwhere(x < 0)[0][1])
        raise ConceptDataError(f"{name}: negative category code in column {j}")
    if cards is None:
        cards = tuple(int(v) + 1 for v in x.max(0))
    cards = tuple(int(c) for c in cards)
    if len(cards) != m:
        raise ConceptDataError(f"{name}: {len(cards)} cardinalities for {m} columns")
    for j, k in enumerate(cards):
        if k < 2:
            raise ConceptDataError(f"{name}: column {j} has cardinality {k} (< 2): a constant variable carries "
                                   "no rank information")
        if x[:, j].max() >= k:
            raise ConceptDataError(f"{name}: column {j} has code {int(x[:, j].max())} >= its cardinality {k}")
    return x, cards


class _SampleRank(_RankBase):
    def __init__(self, data, cards=None, feature: str = "onehot", min_samples: int = 50):
        if feature not in FEATURES:
            raise ConceptDataError(f"{type(self).__name__}: feature must be one of {FEATURES} (got {feature!r})")
        self.x, self.cards = check_discrete(data, cards, min_samples)
        self.n = self.x.shape[0]
        self.feature = feature
        if feature == "code":
            self._f = self.x.astype(np.float64)
            self._slices = [slice(j, j + 1) for j in range(len(self.cards))]
        else:
            blocks, self._slices, off = [], [], 0
            for j, k in enumerate(self.cards):
                blocks.append(np.eye(k)[self.x[:, j]][:, :-1])
                self._slices.append(slice(off, off + k - 1))
                off += k - 1
            self._f = np.concatenate(blocks, axis=1)
        self._f = self._f - self._f.mean(0)
        self._cov = self._f.T @ self._f / (self.n - 1)

    def _cols(self, idx):
        return np.concatenate([np.arange(self.n_feat)[self._slices[i]] for i in idx])

    @property
    def n_feat(self):
        return self._f.shape[1]

    def features_a(self, a):
        """Centred features of set A: the one-hot joint state (one state dropped) or the codes."""
        if self.feature == "code":
            return self._f[:, self._cols(a)]
        state = np.zeros(self.n, dtype=np.int64)
        for i in a:
            state = state * self.cards[i] + self.x[:, i]
        m = int(np.prod([self.cards[i] for i in a]))
        fa = np.eye(m)[state][:, :-1]
        return fa - fa.mean(0)

    def moments(self, a, b):
        cb = self._cols(b)
        sbb = self._cov[np.ix_(cb, cb)]
        if self.feature == "code":
            ca = self._cols(a)
            return self._cov[np.ix_(ca, ca)], sbb, self._cov[np.ix_(ca, cb)]
        fa = self.features_a(a)
        return fa.T @ fa / (self.n - 1), sbb, fa.T @ self._f[:, cb] / (self.n - 1)

    def _nominal_dims(self, a, b):
        if self.feature == "code":
            return len(a), len(b)
        return int(np.prod([self.cards[i] for i in a])) - 1, sum(self.cards[i] - 1 for i in b)

    def _check_n(self, a, b):
        p, q = self._nominal_dims(a, b)
        if self.n <= p + q + 2:
            raise ConceptDataError(f"{type(self).__name__}: {self.n} samples for a test with {p} + {q} feature "
                                   f"dimensions (A={a}, B={b}); need more samples than dimensions")

    def _stats(self, a, b):
        self._check_n(*self._check_sets(a, b))
        return self.correlations(a, b)


class _LevelTest(_SampleRank):
    """A sample rank test at level alpha."""

    def __init__(self, data, cards=None, alpha: float = 0.05, feature: str = "onehot", min_samples: int = 50):
        if not 0 < alpha < 1:
            raise ConceptDataError(f"{type(self).__name__}: alpha must be in (0, 1), got {alpha}")
        super().__init__(data, cards, feature, min_samples)
        self.alpha = alpha


class BartlettRank(_LevelTest):
    """Sequential Bartlett tests: the smallest r whose H0 'rank <= r' is not rejected at level alpha."""

    def pvalue(self, a, b, r: int) -> float:
        """p-value of H0: covariance rank <= r."""
        rho, p, q = self._stats(a, b)
        if r >= min(p, q):
            return 1.0
        return bartlett_pvalues(rho, self.n, p, q)[r]

    def rank(self, a, b) -> int:
        rho, p, q = self._stats(a, b)
        for r, pv in enumerate(bartlett_pvalues(rho, self.n, p, q)):
            if pv > self.alpha:
                return r
        return min(p, q)


class RobustRank(_LevelTest):
    """Wald test of H0 'rank <= r' on the null block of the whitened cross-covariance with a
    heteroskedasticity-robust (sample) covariance of that block, in the spirit of Kleibergen & Paap (2006).

    Bartlett's chi-square assumes the residual block has the Gaussian covariance; for discrete variables
    that are conditionally independent given a latent (the nulls the learner tests) the residual is
    smaller, so Bartlett is conservative for r > 0. Estimating the block's covariance from the samples fixes
    that: with Mhat = Wa' Sab Wb = U S V' and U0, V0 the last p-r, q-r singular vectors,
    lambda = vec(U0' Mhat V0) and Omega = Cov_i((U0' wa_i) kron (V0' wb_i)), the statistic
    n lambda' Omega^+ lambda is asymptotically chi2((p-r)(q-r)) under H0 (whitening noise enters at second
    order because the true block is zero)."""

    def pvalues(self, a, b, ranks=None):
        a, b = self._check_sets(a, b)
        fa, fb = self.features_a(a), self._f[:, self._cols(b)]
        n = self.n
        wa = fa @ _inv_sqrt(fa.T @ fa / (n - 1), 1e-10)
        wb = fb @ _inv_sqrt(fb.T @ fb / (n - 1), 1e-10)
        p, q = wa.shape[1], wb.shape[1]
        self._check_n(a, b)
        u, _, vt = np.linalg.svd(wa.T @ wb / (n - 1))
        out = {}
        for r in (range(min(p, q)) if ranks is None else ranks):
            if r >= min(p, q):
                out[r] = 1.0
                continue
            za, zb = wa @ u[:, r:], wb @ vt[r:].T
            z = (za[:, :, None] * zb[:, None, :]).reshape(n, -1)
            lam = z.mean(0)
            zc = z - lam
            omega = zc.T @ zc / (n - 1)
            stat = n * lam @ np.linalg.pinv(omega, rcond=1e-10, hermitian=True) @ lam
            out[r] = float(stats.chi2.sf(stat, (p - r) * (q - r)))
        return out

    def pvalue(self, a, b, r: int) -> float:
        return self.pvalues(a, b, [r])[r]

    def rank(self, a, b) -> int:
        a, b = self._check_sets(a, b)
        fa_dim = (int(np.prod([self.cards[i] for i in a])) - 1) if self.feature == "onehot" else len(a)
        for r in range(fa_dim + 1):
            pv = self.pvalue(a, b, r)
            if pv > self.alpha:
                return r
        return fa_dim


class SVDRank(_SampleRank):
    """Count of sample canonical correlations above c * (sqrt(p) + sqrt(q)) / sqrt(n) (the order of the
    largest canonical correlation of independent blocks)."""

    def __init__(self, data, cards=None, c: float = 1.5, feature: str = "onehot", min_samples: int = 50):
        super().__init__(data, cards, feature, min_samples)
        self.c = c

    def threshold(self, p, q):
        return self.c * (np.sqrt(p) + np.sqrt(q)) / np.sqrt(self.n)

    def rank(self, a, b) -> int:
        rho, p, q = self._stats(a, b)
        return int((rho > self.threshold(p, q)).sum())


# ---------------------------------------------------------------------- calibration
def type1_error(bn, a, b, r: int, n: int, draws: int, rng: np.random.Generator, alpha: float = 0.05,
                method: str = "bartlett") -> float:
    """Rejection rate of 'rank <= r' over `draws` independent samples of size n from bn, where the true
    covariance rank between A and B (observed indices) is r: an estimate of the test's type-I error."""
    truth = OracleRank(bn).rank(a, b)
    if truth != r:
        raise ConceptDataError(f"type1_error: the population rank between {a} and {b} is {truth}, not {r}; "
                               "a type-I estimate needs a true null")
    with single_thread_blas():
        return _type1_loop(bn, a, b, r, n, draws, rng, alpha, method)


def _type1_loop(bn, a, b, r, n, draws, rng, alpha, method):
    rejects = 0
    for _ in range(draws):
        x = bn.sample_observed(n, rng)
        cards = tuple(bn.graph.card[i] for i in bn.graph.observed_idx)
        if method == "bartlett":
            rejects += BartlettRank(x, cards, alpha=alpha).pvalue(a, b, r) < alpha
        elif method == "robust":
            rejects += RobustRank(x, cards, alpha=alpha).pvalue(a, b, r) < alpha
        elif method == "svd":
            rejects += SVDRank(x, cards).rank(a, b) > r
        else:
            raise ConceptDataError(f"type1_error: method must be 'bartlett', 'robust' or 'svd' (got {method!r})")
    return rejects / draws
