"""Texts -> [N, D] embeddings through a jitted pooled forward, in few compiled shapes: token ids are padded to a
length bucket (powers of two from 16, capped at `max_len`) and a fixed batch size; each distinct text is embedded
once and memoised. Used by the sentence encoder (jaxlm.io.bert_hf) and DRPO's decoder embedder (jaxlm.align)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class BucketedEmbedder:
    """Subclasses set `self._fn(state, ids[B,T] int32, mask[B,T]) -> [B, D]`, `self._state`, `max_len`,
    `batch_size`, and define `token_ids(text) -> list[int]`; `mask_dtype` is the mask's numpy dtype."""

    mask_dtype = np.float32
    dim = 0  # width of the (empty) result for no texts

    def __init__(self, max_len: int, batch_size: int):
        self.max_len, self.batch_size = int(max_len), int(batch_size)
        self._cache: dict[str, np.ndarray] = {}

    def token_ids(self, text: str) -> list[int]:
        raise NotImplementedError

    def _bucket(self, n: int) -> int:
        b = 16
        while b < n:
            b *= 2
        return min(b, self.max_len)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            ids = [self.token_ids(t) for t in chunk]
            T = self._bucket(max(len(x) for x in ids))
            arr = np.zeros((self.batch_size, T), np.int32)  # fixed batch: one compile per length bucket
            mask = np.zeros((self.batch_size, T), self.mask_dtype)
            for r, x in enumerate(ids):
                arr[r, :len(x)], mask[r, :len(x)] = x, 1
            out = np.asarray(self._fn(self._state, arr, mask), np.float32)
            for r, t in enumerate(chunk):
                self._cache[t] = out[r]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._cache[t] for t in texts])
