"""A deterministic synthetic token stream with the data pipeline's interface (benchmarks, tests, smoke runs).

Each source is a noisy "counting" language: token[t+1] = (token[t] * a_s + b_s) mod V with a small chance of a
random token, so a model can learn it and the loss falls. Batch `step` is a pure function of (seed, step), and the
iterator state is just the next step, as with the real pipeline.
"""

from __future__ import annotations

import numpy as np

from jaxlm.data.stepped import SteppedPipeline
from jaxlm.errors import ConfigError


class SyntheticPipeline(SteppedPipeline):
    def __init__(self, vocab_size: int, seq_len: int, global_batch: int, sources=("code", "language"),
                 weights_by_phase=None, phase_steps=None, seed: int = 0, noise: float = 0.1,
                 process_index: int = 0, process_count: int = 1):
        self.V, self.T, self.B = int(vocab_size), int(seq_len), int(global_batch)
        self.sources = sorted(sources)
        self.seed, self.noise = int(seed), float(noise)
        self.weights = weights_by_phase or [{s: 1.0 for s in self.sources}]
        self.phase_steps = phase_steps or [1 << 62]
        if self.B % process_count:
            raise ConfigError(f"train.global_batch={self.B} is not divisible by {process_count} processes")
        self.rows = slice(process_index * self.B // process_count, (process_index + 1) * self.B // process_count)
        self.step = 0

    def phase_at(self, step: int) -> int:
        acc = 0
        for i, n in enumerate(self.phase_steps):
            acc += n
            if step < acc:
                return i
        return len(self.phase_steps) - 1

    def batch_at(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, step])
        w = self.weights[self.phase_at(step)]
        p = np.array([w.get(s, 0.0) for s in self.sources], np.float64)
        src = rng.choice(len(self.sources), size=self.B, p=p / p.sum()).astype(np.int32)
        start = rng.integers(0, self.V, size=self.B)
        noise = rng.random((self.B, self.T + 1)) < self.noise
        rand = rng.integers(0, self.V, size=(self.B, self.T + 1))
        toks = np.empty((self.B, self.T + 1), np.int64)
        toks[:, 0] = start
        a = 3 + 2 * src
        for t in range(1, self.T + 1):
            nxt = (toks[:, t - 1] * a + 7) % self.V
            toks[:, t] = np.where(noise[:, t], rand[:, t], nxt)
        toks = toks.astype(np.int32)
        r = self.rows
        return {"inputs": toks[r, :-1], "targets": toks[r, 1:], "source_id": src[r],
                "step": np.int64(step)}

    def identity(self) -> dict:
        return {"seed": self.seed}

    def eval_batches(self, n: int, seed_offset: int = 10_000) -> dict:
        """Held-out batches per source (different seeds from training)."""
        out = {}
        for i, s in enumerate(self.sources):
            bs = []
            for k in range(n):
                b = self.batch_at(seed_offset + 1000 * i + k)
                bs.append({"inputs": b["inputs"], "targets": b["targets"]})
            out[s] = bs
        return out
