"""Token windows: seeded random windows of one token array per step, and consecutive held-out windows.

The simple alternative to `build_pipeline`'s packing (documents, EOS, epochs, mixtures): one flat int32 token array
(e.g. `tokenize_texts(texts, tok)`), and at step s the `batch` windows starting at `rng([seed, step_offset + s])`
draws. Any Task that reads token batches can train on it through the engine (`jaxlm.train.train`), and a run resumed
at step s sees exactly the batches of the uninterrupted run (a batch is a pure function of (seed, step)).

    from jaxlm.data import RandomWindowPipeline, tokenize_texts, topics_split, window_eval_batches
    train_texts, held_texts = topics_split(holdout_every=10)      # Python's pydoc_data.topics, every 10th held out
    pipe = RandomWindowPipeline(tokenize_texts(train_texts, tok), batch=4, seq_len=64, seed=0)
    pipe.next()  # {"inputs": int32 [4, 64], "targets": int32 [4, 64] (inputs shifted left, last -1), "step": 0}
    evb = window_eval_batches(tokenize_texts(held_texts, tok), batch=4, seq_len=64, max_batches=4)

A window is `seq_len` tokens: "inputs" is the window and "targets" the next token of every position but the last
(-1: ignored by `token_nll`), so a model sees exactly the window (what distillation compares position by position).
`full_targets=True` draws seq_len + 1 tokens instead, so every input position has a target (language modelling).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxlm.data.stepped import SteppedPipeline
from jaxlm.errors import ConfigError, DataError


def topics_split(holdout_every: int = 10) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts) of Python's bundled documentation (`pydoc_data.topics.topics`): the topics in
    sorted key order, every `holdout_every`-th one (index 0, k, 2k, ...) held out. Deterministic, no download."""
    if isinstance(holdout_every, bool) or not isinstance(holdout_every, int) or holdout_every < 2:
        raise ConfigError(f"topics_split: holdout_every must be an integer >= 2, got {holdout_every!r}")
    from pydoc_data.topics import topics

    keys = sorted(topics)
    return ([topics[k] for i, k in enumerate(keys) if i % holdout_every],
            [topics[k] for i, k in enumerate(keys) if i % holdout_every == 0])


def tokenize_texts(texts: Sequence[str], tokenizer, eos: bool = True) -> np.ndarray:
    """The texts' token ids concatenated into one int32 array (no BOS; the tokenizer's EOS after each text)."""
    from jaxlm.data.tokenizer import as_tokenizer

    tok = as_tokenizer(tokenizer)
    tail = [np.asarray([tok.eos_id], np.int32)] if eos else []
    parts = [p for ids in tok.encode_batch(list(texts)) for p in (np.asarray(ids, np.int32), *tail)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def _windows(w: np.ndarray, full_targets: bool) -> dict:
    if full_targets:
        return {"inputs": np.ascontiguousarray(w[:, :-1]), "targets": np.ascontiguousarray(w[:, 1:])}
    return {"inputs": w, "targets": np.concatenate([w[:, 1:], np.full_like(w[:, :1], -1)], axis=1)}


def _check_sizes(where: str, n_tokens: int, batch, seq_len, need: int):
    for k, v in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if k == "seq_len" else 1):
            raise ConfigError(f"{where}: {k} must be an integer >= {2 if k == 'seq_len' else 1}, got {v!r}")
    if n_tokens < need:
        raise DataError(f"{where}: {n_tokens} tokens, need at least {need} (seq_len={seq_len})")


class RandomWindowPipeline(SteppedPipeline):
    """Seeded random windows of `tokens` per step (the engine's pipeline contract: next(), get_state(),
    set_state(); `batch_at(step)` without history). Step s's windows start at
    `np.random.default_rng([seed, step_offset + s]).integers(0, len(tokens) - seq_len, size=batch)`;
    `step_offset` lets consecutive runs (e.g. the stages of a distillation) continue one global window sequence.
    With several processes each yields its rows of the global batch."""

    def __init__(self, tokens, batch: int, seq_len: int, seed: int = 0, *, step_offset: int = 0,
                 full_targets: bool = False, process_index: int = 0, process_count: int = 1):
        self.tokens = np.asarray(tokens, np.int32).reshape(-1)
        self.window = int(seq_len) + 1 if full_targets else seq_len
        _check_sizes("RandomWindowPipeline", len(self.tokens), batch, seq_len, self.window + 1)
        if batch % process_count:
            raise ConfigError(f"RandomWindowPipeline: batch={batch} is not divisible by {process_count} processes")
        self.batch, self.seq_len, self.seed = batch, seq_len, int(seed)
        self.step_offset, self.full_targets = int(step_offset), bool(full_targets)
        k = batch // process_count
        self.rows = slice(process_index * k, (process_index + 1) * k)
        self.step = 0

    def starts_at(self, step: int) -> np.ndarray:
        """The global batch's window starts at `step`."""
        rng = np.random.default_rng([self.seed, self.step_offset + int(step)])
        return rng.integers(0, len(self.tokens) - self.window, size=self.batch)

    def batch_at(self, step: int) -> dict:
        w = np.stack([self.tokens[s:s + self.window] for s in self.starts_at(step)[self.rows]])
        return {**_windows(w, self.full_targets), "step": np.int64(step)}

    def identity(self) -> dict:
        return {"seed": self.seed, "step_offset": self.step_offset, "batch": self.batch, "seq_len": self.seq_len,
                "full_targets": self.full_targets, "n_tokens": len(self.tokens)}


def window_eval_batches(tokens, batch: int, seq_len: int, max_batches: int | None = None, *,
                        full_targets: bool = False) -> list[dict]:
    """Consecutive non-overlapping windows of `tokens` (held-out data), `batch` per batch, full batches only (or one
    smaller batch when there are fewer than `batch` windows); the same inputs/targets layout as
    RandomWindowPipeline."""
    tokens = np.asarray(tokens, np.int32).reshape(-1)
    window = seq_len + 1 if full_targets else seq_len
    _check_sizes("window_eval_batches", len(tokens), batch, seq_len, window)
    n = len(tokens) // window
    if max_batches is not None:
        n = min(n, batch * int(max_batches))
    wins = tokens[:n * window].reshape(n, window)
    out = [_windows(wins[i:i + batch], full_targets) for i in range(0, n - n % batch or n, batch)]
    return out[:max_batches] if max_batches is not None else out


__all__ = ["topics_split", "tokenize_texts", "RandomWindowPipeline", "window_eval_batches"]
