"""Weighted mixtures of sources whose weights change by phase.

Each step's global batch of B samples is split between the sources by a multinomial draw with the phase's
weights (so empirical fractions converge to the weights), and the slots are shuffled within the batch. The
draws are seeded per (seed, phase, chunk of 1024 steps), so the number of samples any source has contributed
before step t is a prefix sum that can be computed for any t without replaying the run: this is what lets the
pipeline regenerate the exact batch of any step. After the last phase's steps the last phase continues.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Mapping, Sequence

import numpy as np

from jaxlm.errors import ConfigError

_TAG_COUNTS, _TAG_SLOTS = 0x6D6978, 0x736C74
CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    """One training phase: `steps` steps drawing from sources with `weights` (name -> weight, normalized);
    code sources get FIM with probability `fim_rate`, SPM format for a `fim_spm_rate` fraction of those."""

    steps: int
    weights: Mapping[str, float]
    fim_rate: float = 0.0
    fim_spm_rate: float = 0.5
    name: str = ""


def validate_phases(phases: Sequence[PhaseSpec], names: Sequence[str]) -> list[np.ndarray]:
    """Check every phase and return its normalized weight vector over `names` (sorted source names)."""
    if not phases:
        raise ConfigError("DataConfig.phases: at least one PhaseSpec is required")
    out = []
    for i, ph in enumerate(phases):
        where = f"DataConfig.phases[{i}]"
        if not isinstance(ph, PhaseSpec):
            raise ConfigError(f"{where}: expected a PhaseSpec, got {type(ph).__name__}")
        if not isinstance(ph.steps, (int, np.integer)) or isinstance(ph.steps, bool) or ph.steps < 1:
            raise ConfigError(f"{where}.steps must be a positive integer, got {ph.steps!r}")
        for field in ("fim_rate", "fim_spm_rate"):
            v = getattr(ph, field)
            if not isinstance(v, (int, float, np.integer, np.floating)) or not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"{where}.{field} must be in [0, 1], got {v!r}")
        if not isinstance(ph.weights, Mapping) or not ph.weights:
            raise ConfigError(f"{where}.weights must be a non-empty mapping source name -> weight")
        w = np.zeros(len(names))
        for k, v in ph.weights.items():
            if k not in names:
                raise ConfigError(f"{where}.weights: unknown source {k!r} (sources: {list(names)})")
            if not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{where}.weights[{k!r}] must be a finite weight >= 0, got {v!r}")
            w[names.index(k)] = float(v)
        if w.sum() <= 0:
            raise ConfigError(f"{where}.weights must sum to > 0, got {dict(ph.weights)}")
        out.append(w / w.sum())
    return out


class Mixture:
    """Per-step source counts and slot assignment for a phase schedule (random access by step)."""

    def __init__(self, phases: Sequence[PhaseSpec], names: Sequence[str], global_batch: int, seed: int,
                 shuffle: bool = True):
        self.names = list(names)
        self.phases = list(phases)
        self.weights = validate_phases(phases, self.names)
        self.batch, self.seed, self.shuffle = global_batch, seed, shuffle
        self.starts = np.concatenate([[0], np.cumsum([p.steps for p in phases])]).astype(np.int64)
        self._chunks: dict[tuple[int, int], np.ndarray] = {}  # (phase, chunk) -> counts [CHUNK, S]
        self._chunk_cum: dict[int, list[np.ndarray]] = {}  # phase -> draws before each chunk (within phase)
        self._phase_before: list[np.ndarray] = []  # draws before each phase start
        self._lock = threading.RLock()

    @property
    def total_steps(self) -> int:
        return int(self.starts[-1])

    def phase_at(self, step: int) -> int:
        if step < 0:
            raise ConfigError(f"step={step}: must be >= 0")
        return min(int(np.searchsorted(self.starts, step, side="right")) - 1, len(self.phases) - 1)

    def _chunk(self, p: int, c: int) -> np.ndarray:
        key = (p, c)
        hit = self._chunks.get(key)
        if hit is None:
            rng = np.random.default_rng([self.seed, _TAG_COUNTS, p, c])
            hit = rng.multinomial(self.batch, self.weights[p], size=CHUNK).astype(np.int64)
            self._chunks[key] = hit
        return hit

    def _cum_before_chunk(self, p: int, c: int) -> np.ndarray:
        cums = self._chunk_cum.setdefault(p, [np.zeros(len(self.names), np.int64)])
        while len(cums) <= c:
            cums.append(cums[-1] + self._chunk(p, len(cums) - 1).sum(axis=0))
        return cums[c]

    def _draws_before_phase(self, p: int) -> np.ndarray:
        while len(self._phase_before) <= p:
            q = len(self._phase_before)
            if q == 0:
                self._phase_before.append(np.zeros(len(self.names), np.int64))
                continue
            prev = q - 1
            n = int(self.phases[prev].steps)
            c, r = divmod(n, CHUNK)
            total = self._cum_before_chunk(prev, c) + (self._chunk(prev, c)[:r].sum(axis=0) if r else 0)
            self._phase_before.append(self._phase_before[prev] + total)
        return self._phase_before[p]

    def counts(self, step: int) -> np.ndarray:
        """Samples per source in the global batch of `step` (int64 [S], sums to global_batch)."""
        with self._lock:
            p = self.phase_at(step)
            c, r = divmod(step - int(self.starts[p]), CHUNK)
            return self._chunk(p, c)[r].copy()

    def draws_before(self, step: int) -> np.ndarray:
        """Samples each source contributed to all steps before `step` (int64 [S])."""
        with self._lock:
            p = self.phase_at(step)
            c, r = divmod(step - int(self.starts[p]), CHUNK)
            return self._draws_before_phase(p) + self._cum_before_chunk(p, c) + self._chunk(p, c)[:r].sum(axis=0)

    def slots(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index [B], draw index within that source [B]) for each slot of the global batch."""
        counts = self.counts(step)
        src = np.repeat(np.arange(len(self.names)), counts)
        if self.shuffle:
            src = np.random.default_rng([self.seed, _TAG_SLOTS, step]).permutation(src)
        base = self.draws_before(step)
        draw = np.empty(self.batch, np.int64)
        for s in np.flatnonzero(counts):
            where = np.flatnonzero(src == s)
            draw[where] = base[s] + np.arange(len(where))
        return src.astype(np.int32), draw
