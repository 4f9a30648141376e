"""Scoring token sequences: per-token log-probabilities, greedy flags and top-k alternatives from a full forward.

The one place for the scoring math used by the lm-evaluation-harness adapter (jaxlm.eval.harness), the server's
`echo`/`logprobs` answers (jaxlm.infer.server) and checkpoint analysis (recipes.analysis):

    token_logprobs(logits, targets) -> logprob of each target under the logits before it, and whether it was the
                                      argmax
    top_logprobs(logits, k)        -> the k most likely next tokens and their logprobs at every position
    Scorer(model).score(seqs, top_k=0) -> one `SeqScore` per token sequence (any lengths, any order)

`Scorer` batches sequences by length: a sequence of n tokens feeds its first n - 1 (the last one is only a target,
so a sequence may be one token longer than the context), each batch is right-padded to a power-of-two length
bucket (>= 16) of fed tokens and a power-of-two row count, so an evaluation over thousands of requests compiles its forward a handful of times.
Right padding never changes the scores of the real tokens because every model family here is causal (decoder,
Mamba-2, Phi-Mamba): position t only sees positions <= t. On a mesh the parameters are placed by the logical rules
and the forward runs under the mesh, as generation does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.errors import PromptTooLongError, RequestError

MIN_LEN_BUCKET = 16


def token_logprobs(logits, targets):
    """logits [B, T, V] (float) after inputs ids[:, :T], targets [B, T] = ids[:, 1:T + 1] -> (logprobs [B, T],
    greedy [B, T] bool): the log-probability of each target under the logits before it, and whether it is the
    argmax there."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    lp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return lp, jnp.argmax(logits, axis=-1) == targets


def top_logprobs(logits, k: int):
    """logits [..., V] -> (logprobs [..., k], ids [..., k]) of the k most likely tokens, most likely first."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jax.lax.top_k(logp, k)


def logprobs_np(logits) -> np.ndarray:
    """Host-side log_softmax of logits [..., V] in float64 (for a handful of rows, e.g. one decode step)."""
    x = np.asarray(logits, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def bucket(n: int, minimum: int = 1, cap: int | None = None) -> int:
    b = max(1 << max(int(n) - 1, 0).bit_length(), minimum)
    return min(b, cap) if cap is not None else b


def _score(graphdef, mesh, state, ids, *, k: int):
    from jaxlm.sharding import use_mesh

    def run():
        logits = nnx.merge(graphdef, state)(ids[:, :-1])
        lp, greedy = token_logprobs(logits, ids[:, 1:])
        if not k:
            return lp, greedy
        tv, ti = top_logprobs(logits, k)
        return lp, greedy, tv, ti

    if mesh is None:
        return run()
    with use_mesh(mesh):
        return run()


def _last(graphdef, mesh, state, ids, lens):
    """Logits after the last real token of each right-padded row: ids [B, T], lens [B] -> [B, V] float32."""
    from jaxlm.sharding import use_mesh

    def run():
        logits = nnx.merge(graphdef, state)(ids)
        return jnp.take_along_axis(logits, (lens - 1)[:, None, None], axis=1)[:, 0].astype(jnp.float32)

    if mesh is None:
        return run()
    with use_mesh(mesh):
        return run()


_COMPILED: dict = {}
_COMPILED_LAST: dict = {}


def compiled_score(graphdef, mesh=None):
    key = (graphdef, mesh)
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(partial(_score, graphdef, mesh), static_argnames=("k",))
    return _COMPILED[key]


@dataclass
class SeqScore:
    """Scores of one sequence of n tokens: entry t is about token t + 1 given tokens 0..t (n - 1 entries)."""

    logprobs: np.ndarray              # [n - 1] float32
    greedy: np.ndarray                # [n - 1] bool: token t + 1 was the most likely next token
    top_ids: np.ndarray | None = None  # [n - 1, k]
    top_logprobs: np.ndarray | None = None  # [n - 1, k]

    def span(self, start: int, stop: int | None = None) -> tuple[float, bool]:
        """(sum of logprobs, all greedy) of tokens start..stop-1 (token indices of the sequence, start >= 1)."""
        sl = slice(start - 1, None if stop is None else stop - 1)
        return float(np.sum(self.logprobs[sl], dtype=np.float64)), bool(np.all(self.greedy[sl]))


class Scorer:
    """Length-bucketed, jitted scoring of token sequences with any jaxlm language model.

    model: a DecoderLM / Mamba2LM / PhiMambaLM (anything whose call maps ids [B, T] to logits [B, T, V]);
    mesh: place the parameters by the logical rules and run under it (or pass graphdef/state already placed, e.g.
    a Generator's); context_len: the longest sequence accepted (default: the model's); max_tokens: the most tokens
    (rows x bucket length) in one forward."""

    def __init__(self, model=None, *, mesh=None, context_len: int | None = None, max_tokens: int = 8192,
                 graphdef=None, state=None, cfg=None):
        from jaxlm.infer.generate import model_context

        if graphdef is None:
            graphdef, state = nnx.split(model)
            if mesh is not None:
                from jaxlm.sharding import check_mesh_for_model, state_shardings

                check_mesh_for_model(mesh, model.cfg)
                state = jax.device_put(state, state_shardings(state, mesh))
        self.cfg = cfg if cfg is not None else model.cfg
        self.vocab_size = int(getattr(self.cfg, "base", self.cfg).vocab_size)  # PhiMambaConfig keeps it in .base
        self.graphdef, self.state, self.mesh = graphdef, state, mesh
        self.context_len = int(context_len or model_context(self.cfg))
        self.max_tokens = int(max_tokens)
        self._fn = compiled_score(graphdef, mesh)
        self.shapes: set = set()  # (rows, length, k) compiled so far (observability, tests)

    def check(self, seq, what: str = "sequence") -> list[int]:
        ids = [int(t) for t in seq]
        V = self.vocab_size
        if len(ids) < 2:
            raise RequestError(f"{what}: {len(ids)} token(s); scoring needs at least 2 (a context and a token)")
        if len(ids) - 1 > self.context_len:
            raise PromptTooLongError(f"{what}: {len(ids)} tokens ({len(ids) - 1} fed to the model) exceed the model's "
                                     f"context length {self.context_len}")
        bad = [t for t in ids if not 0 <= t < V]
        if bad:
            raise RequestError(f"{what}: token id {bad[0]} is outside the vocabulary [0, {V})")
        return ids

    def score(self, seqs: Sequence[Sequence[int]], top_k: int = 0) -> list[SeqScore]:
        """One SeqScore per sequence (in the given order). Sequences need 2..context_len + 1 tokens."""
        seqs = [self.check(s, f"sequence {i}") for i, s in enumerate(seqs)]
        out: list[SeqScore | None] = [None] * len(seqs)
        by_len: dict[int, list[int]] = {}
        for i, sq in enumerate(seqs):  # one length bucket per batch: a short request never pays for a long one
            by_len.setdefault(bucket(len(sq) - 1, MIN_LEN_BUCKET, None), []).append(i)
        batches = []
        for T, idx in sorted(by_len.items()):
            rows = 1 << (max(self.max_tokens // T, 1).bit_length() - 1)
            batches += [(T, idx[j:j + rows]) for j in range(0, len(idx), rows)]
        for T, group in batches:
            B = bucket(len(group))
            if self.mesh is not None:  # rows split over the mesh's batch axes (data x fsdp)
                B = max(B, self.mesh.shape["data"] * self.mesh.shape["fsdp"])
            ids = np.zeros((B, T + 1), np.int32)
            for r, j in enumerate(group):
                ids[r, :len(seqs[j])] = seqs[j]
            self.shapes.add((B, T, int(top_k)))
            res = jax.device_get(self._fn(self.state, jnp.asarray(ids), k=int(top_k)))
            for r, j in enumerate(group):
                n = len(seqs[j]) - 1
                out[j] = SeqScore(res[0][r, :n], res[1][r, :n], *((res[3][r, :n], res[2][r, :n]) if top_k else ()))
        return out

    def next_logits(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """[n, V] logits after the last token of each sequence (full forwards, no cache: for models without one,
        e.g. Phi-Mamba, generation recomputes the prefix each step)."""
        key = (self.graphdef, self.mesh)
        if key not in _COMPILED_LAST:
            _COMPILED_LAST[key] = jax.jit(partial(_last, self.graphdef, self.mesh))
        fn = _COMPILED_LAST[key]
        T = bucket(max(len(q) for q in seqs), MIN_LEN_BUCKET, None)
        if max(len(q) for q in seqs) > self.context_len:
            raise PromptTooLongError(f"{max(len(q) for q in seqs)} tokens exceed the model's context length "
                                     f"{self.context_len}")
        B = bucket(len(seqs))
        ids, lens = np.zeros((B, T), np.int32), np.ones((B,), np.int32)
        for r, q in enumerate(seqs):
            ids[r, :len(q)], lens[r] = q, len(q)
        return np.asarray(fn(self.state, jnp.asarray(ids), jnp.asarray(lens)))[:len(seqs)]

    def loglikelihood(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """(sum logprob, greedy) of each continuation given its context (token ids; the context non-empty)."""
        for i, (ctx, cont) in enumerate(pairs):
            if not len(ctx):
                raise RequestError(f"request {i}: empty context (give at least one token, e.g. BOS/EOS)")
        live = [i for i, (_, x) in enumerate(pairs) if len(x)]
        sc = self.score([list(pairs[i][0]) + list(pairs[i][1]) for i in live])
        out = [(0.0, True)] * len(pairs)
        for i, s in zip(live, sc):
            out[i] = s.span(len(pairs[i][0]))
        return out


__all__ = ["token_logprobs", "top_logprobs", "logprobs_np", "Scorer", "SeqScore", "compiled_score"]
