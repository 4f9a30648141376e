"""LLM360 packing: tokenized documents (no BOS) joined with EOS into one stream, cut into seq_len+1 token samples.

Sample i is stream[i*(L+1) : (i+1)*(L+1)]; a model trains on inputs = sample[:-1], targets = sample[1:]. A document
longer than a sample simply continues in the next sample; the last partial window of a stream is dropped (as in
Amber's and Crystal's data preparation). `PackedStream` gives random access to sample i without materializing the
stream, so any sample of any epoch can be regenerated directly.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np


class TokenStore:
    """Token ids of many documents in one flat array: doc i = flat[offsets[i]:offsets[i+1]]."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat = flat
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.diff(self.offsets)

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], dtype=np.int32) -> "TokenStore":
        lens = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        flat = np.concatenate([np.asarray(a) for a in arrays]).astype(dtype) if arrays else np.zeros(0, dtype)
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def save(self, path: str) -> None:
        """Atomic write (several processes may fill the same cache)."""
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        dtype = np.uint16 if (self.flat.size == 0 or int(self.flat.max()) < 65536) else np.int32
        np.savez(tmp, flat=self.flat.astype(dtype), offsets=self.offsets)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "TokenStore":
        with np.load(path) as z:
            return cls(z["flat"].astype(np.int32), z["offsets"])


class OverlayStore:
    """A base store where some documents are replaced (e.g. by their FIM-permuted tokens)."""

    def __init__(self, base: TokenStore, overrides: TokenStore, index: np.ndarray):
        self.base, self.overrides, self.index = base, overrides, np.asarray(index, dtype=np.int64)
        self.lengths = base.lengths.copy()
        sel = self.index >= 0
        self.lengths[sel] = overrides.lengths[self.index[sel]]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> np.ndarray:
        j = self.index[i]
        return self.overrides[j] if j >= 0 else self.base[i]


class PackedStream:
    """Documents `docs[order[0]], EOS, docs[order[1]], EOS, ...` cut into windows of seq_len+1 tokens."""

    def __init__(self, docs, order: np.ndarray, eos_id: int, seq_len: int):
        self.docs, self.order, self.eos_id, self.width = docs, np.asarray(order, dtype=np.int64), eos_id, seq_len + 1
        lens = docs.lengths[self.order] + 1
        self.cum = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        self.n_tokens = int(self.cum[-1])
        self.n_samples = self.n_tokens // self.width

    def sample(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n_samples:
            raise IndexError(f"sample {i} out of range [0, {self.n_samples})")
        w = self.width
        start = i * w
        out = np.empty(w, dtype=np.int32)
        j = int(np.searchsorted(self.cum, start, side="right")) - 1
        pos = 0
        while pos < w:
            toks = self.docs[int(self.order[j])]
            off = start + pos - int(self.cum[j])
            n = len(toks)
            if off < n:
                take = min(n - off, w - pos)
                out[pos:pos + take] = toks[off:off + take]
                pos += take
            if pos < w:  # this document's EOS
                out[pos] = self.eos_id
                pos += 1
            j += 1
        return out


def pack(docs: Iterable[Sequence[int]], eos_id: int, seq_len: int) -> np.ndarray:
    """Reference packing: [n_samples, seq_len+1] int32 from documents in order (drops the last partial window)."""
    stream = []
    for d in docs:
        stream.extend(int(t) for t in d)
        stream.append(eos_id)
    n = len(stream) // (seq_len + 1)
    return np.asarray(stream[:n * (seq_len + 1)], dtype=np.int32).reshape(n, seq_len + 1)


def inputs_targets(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., seq_len+1] samples -> (inputs, targets), each [..., seq_len]: targets are inputs shifted by one."""
    return samples[..., :-1], samples[..., 1:]
