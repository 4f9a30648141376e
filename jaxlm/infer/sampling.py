"""Token sampling: pure, jittable functions over a batch of logits [B, V].

Every knob is a per-row array (shape [B]) so one compiled decode step serves a batch whose rows use different
settings (the server batches requests with different parameters). A value that disables a knob:
temperature 0 (greedy), top_k 0, top_p 1.0, min_p 0.0, repetition_penalty 1.0.

Order (the same as transformers' `generate`): repetition penalty -> temperature -> top-k -> top-p -> min-p ->
draw. Which filters run at all is static (`SamplingFlags`), so a greedy batch compiles to a plain argmax.

Randomness: each row owns a key made from its request's seed; the draw for the token at sequence position `pos` is a
Gumbel-max over counter-based uniforms hash(seed, pos, token id) (see `uniforms`). The tokens of a request therefore depend only on its seed, its prompt and its settings, never on
the other rows of the batch or on how the batch was assembled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import SamplingError  # noqa: F401  (re-exported: the old import path)

NEG_INF = -jnp.inf


@dataclass(frozen=True)
class SamplingParams:
    """Settings of one request. Validated on construction (`SamplingError` names the bad field)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        def num(name, v):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise SamplingError(f"{name}={v!r}: expected a finite number")
            return v

        num("temperature", self.temperature)
        if self.temperature < 0:
            raise SamplingError(f"temperature={self.temperature}: must be >= 0 (0 = greedy)")
        num("top_k", self.top_k)
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise SamplingError(f"top_k={self.top_k}: must be an integer >= 0 (0 = off)")
        num("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p={self.top_p}: must be in (0, 1] (1 = off)")
        num("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise SamplingError(f"min_p={self.min_p}: must be in [0, 1] (0 = off)")
        num("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise SamplingError(f"repetition_penalty={self.repetition_penalty}: must be > 0 (1 = off)")
        num("seed", self.seed)
        if int(self.seed) != self.seed or not 0 <= self.seed < 2**63:
            raise SamplingError(f"seed={self.seed}: must be an integer in [0, 2**63)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SamplingFlags:
    """Static switches: which stages the compiled step contains (one compile per combination)."""

    sample: bool = False       # any row samples (temperature > 0); otherwise argmax only
    top_k: bool = False
    top_p: bool = False
    min_p: bool = False
    repetition: bool = False

    @classmethod
    def of(cls, params: list[SamplingParams]) -> "SamplingFlags":
        sampled = [p for p in params if not p.greedy]
        return cls(sample=bool(sampled), top_k=any(p.top_k > 0 for p in sampled),
                   top_p=any(p.top_p < 1.0 for p in sampled), min_p=any(p.min_p > 0.0 for p in sampled),
                   repetition=any(p.repetition_penalty != 1.0 for p in params))


def pack_params(params: list[SamplingParams]) -> dict[str, np.ndarray]:
    """Per-row arrays (numpy, host) for a batch of requests."""
    return dict(
        temperature=np.array([p.temperature for p in params], np.float32),
        top_k=np.array([p.top_k for p in params], np.int32),
        top_p=np.array([p.top_p for p in params], np.float32),
        min_p=np.array([p.min_p for p in params], np.float32),
        repetition_penalty=np.array([p.repetition_penalty for p in params], np.float32),
    )


def row_keys(seeds) -> jax.Array:
    """One key per row from integer seeds [B] -> uint32 [B, 2]."""
    seeds = np.asarray(seeds, np.uint64)
    hi, lo = (seeds >> np.uint64(32)).astype(np.uint32), (seeds & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return jnp.stack([jnp.asarray(hi), jnp.asarray(lo)], axis=-1)


# ---- the stages (each: logits [B, V] float32 -> logits [B, V]) ----

def repetition_penalty(logits, seen, penalty):
    """transformers' rule: for every token already in the sequence (prompt or output), a negative logit is
    multiplied by the penalty and a positive one divided by it. seen [B, V] bool, penalty [B]."""
    p = penalty[:, None]
    penalised = jnp.where(logits < 0, logits * p, logits / p)
    return jnp.where(seen, penalised, logits)


def apply_temperature(logits, temperature):
    t = jnp.where(temperature > 0, temperature, 1.0)[:, None]
    return logits / t


def top_k_mask(logits, k):
    """Keep the k largest logits of each row (ties with the k-th value are kept, like transformers); k=0 keeps all.
    Works on any row order; on descending-sorted rows it only looks at the k-th entry."""
    V = logits.shape[-1]
    kk = jnp.clip(jnp.where(k > 0, k, V), 1, V)
    kth = jnp.take_along_axis(-jnp.sort(-logits, axis=-1), (kk - 1)[:, None], axis=-1)
    return jnp.where(logits < kth, NEG_INF, logits)


def _top_k_sorted(s, k):
    V = s.shape[-1]
    kk = jnp.clip(jnp.where(k > 0, k, V), 1, V)
    kth = jnp.take_along_axis(s, (kk - 1)[:, None], axis=-1)
    return jnp.where(s < kth, NEG_INF, s)


def _top_p_sorted(s, p):
    """s: logits sorted descending. A token is kept when the probability mass of the tokens ahead of it is below p
    (so the most likely token always stays); p=1 keeps all. Same rule as transformers' TopPLogitsWarper."""
    probs = jax.nn.softmax(s, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = (before < p[:, None]) | (jnp.arange(s.shape[-1]) == 0) | (p >= 1.0)[:, None]
    return jnp.where(keep, s, NEG_INF)


def top_p_mask(logits, p):
    """Nucleus filtering in vocabulary order (sorts each row)."""
    order = jnp.argsort(-logits, axis=-1)
    masked = _top_p_sorted(jnp.take_along_axis(logits, order, axis=-1), p)
    return _unsort(masked, order)


def min_p_mask(logits, min_p):
    """Drop tokens whose probability is below min_p times the most likely token's probability:
    p_i < min_p * p_max  <=>  logit_i - logit_max < log(min_p). min_p=0 keeps all."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    thresh = jnp.where(min_p > 0, jnp.log(jnp.maximum(min_p, 1e-38)), NEG_INF)[:, None]
    return jnp.where(logits - top < thresh, NEG_INF, logits)


def _unsort(sorted_vals, order):
    B = order.shape[0]
    return jnp.zeros_like(sorted_vals).at[jnp.arange(B)[:, None], order].set(sorted_vals)


def _filtered(logits, params: dict, flags: SamplingFlags, seen=None):
    """-> (filtered logits, order): when top-k/top-p run, the rows are sorted descending and `order` maps sorted
    positions back to token ids (one sort per step); otherwise order is None and rows are in vocabulary order."""
    logits = logits.astype(jnp.float32)
    if flags.repetition:
        logits = repetition_penalty(logits, seen, params["repetition_penalty"])
    if not flags.sample:
        return logits, None
    logits = apply_temperature(logits, params["temperature"])
    order = None
    if flags.top_k or flags.top_p:
        order = jnp.argsort(-logits, axis=-1)
        logits = jnp.take_along_axis(logits, order, axis=-1)
        if flags.top_k:
            logits = _top_k_sorted(logits, params["top_k"])
        if flags.top_p:
            logits = _top_p_sorted(logits, params["top_p"])
    if flags.min_p:
        logits = min_p_mask(logits, params["min_p"])
    return logits, order


def process_logits(logits, params: dict, flags: SamplingFlags, seen=None):
    """All filtering stages, in vocabulary order: the logits a draw is made from (masked entries are -inf)."""
    out, order = _filtered(logits, params, flags, seen)
    return out if order is None else _unsort(out, order)


def sample(logits, params: dict, flags: SamplingFlags, keys=None, positions=None, seen=None):
    """Next token per row [B] int32. keys [B, 2] uint32 (row_keys), positions [B] int32 (the position of the
    token being drawn; folded into the key). Rows with temperature 0 take the argmax."""
    if not flags.sample:
        lg = logits.astype(jnp.float32)
        if flags.repetition:
            lg = repetition_penalty(lg, seen, params["repetition_penalty"])
        return jnp.argmax(lg, axis=-1).astype(jnp.int32)
    greedy_logits = logits.astype(jnp.float32)
    if flags.repetition:
        greedy_logits = repetition_penalty(greedy_logits, seen, params["repetition_penalty"])
    greedy = jnp.argmax(greedy_logits, axis=-1).astype(jnp.int32)
    proc, order = _filtered(logits, params, flags, seen)
    drawn = gumbel_argmax(proc, keys, positions)
    if order is not None:
        drawn = jnp.take_along_axis(order, drawn[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jnp.where(params["temperature"] > 0, drawn, greedy)


def _mix32(x):
    """lowbias32 (C. Wellons): a 32-bit integer hash with strong avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def uniforms(keys, positions, n: int):
    """Counter-based uniforms in (0, 1): one per (row key, position, token index) -> [B, n] float32.

    A hash of (seed, position, index) rather than jax.random: identical on every backend, and it compiles an order
    of magnitude faster than threefry on CPU, which matters for a decode step recompiled per batch shape."""
    keys = keys.astype(jnp.uint32)
    h = _mix32(keys[:, 1] ^ _mix32(keys[:, 0] + jnp.uint32(0x9E3779B9)))
    h = _mix32(h ^ _mix32(positions.astype(jnp.uint32) + jnp.uint32(0x632BE5AB)))
    idx = jnp.arange(n, dtype=jnp.uint32)[None, :]
    z = _mix32(_mix32(h[:, None] ^ (idx * jnp.uint32(0x85EBCA6B))) + idx)
    return ((z >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def gumbel_argmax(logits, keys, positions):
    """A draw from softmax(logits) per row (Gumbel-max); -inf entries are never drawn."""
    g = -jnp.log(-jnp.log(uniforms(keys, positions, logits.shape[-1])))
    return jnp.argmax(logits + g, axis=-1).astype(jnp.int32)


def update_seen(seen, tokens):
    """Mark tokens [B] as present in each row's sequence (for the repetition penalty)."""
    return seen.at[jnp.arange(tokens.shape[0]), tokens].set(True)


def seen_from_ids(ids, lengths, vocab_size: int):
    """[B, T] right-padded ids and true lengths [B] -> seen mask [B, V] bool."""
    B, T = ids.shape
    valid = jnp.arange(T)[None, :] < lengths[:, None]
    seen = jnp.zeros((B, vocab_size + 1), bool)
    idx = jnp.where(valid, ids, vocab_size)  # padding goes to a scratch column
    seen = seen.at[jnp.arange(B)[:, None], idx].set(True)
    return seen[:, :vocab_size]
