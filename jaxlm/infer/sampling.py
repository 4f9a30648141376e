"""Token sampling: pure, jittable functions over a batch of logits [B, V].

Every knob is a per-row array (shape [B]) so one compiled decode step serves a batch whose rows use different
settings (the server batches requests with different parameters). A value that disables a knob:
temperature 0 (greedy), top_k 0, top_p 1.0, min_p 0.0, repetition_penalty 1.0.

Order (the same as transformers' `generate`): repetition penalty -> temperature -> top-k -> top-p -> min-p ->
draw. Which filters run at all is static (`SamplingFlags`), so a greedy batch compiles to a plain argmax.

Randomness: each row owns a key made from its request's seed; the draw for the token at sequence position `pos` uses
`fold_in(key, pos)`. The tokens of a request therefore depend only on its seed, its prompt and its settings, never on
the other rows of the batch or on how the batch was assembled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -jnp.inf


class SamplingError(ValueError):
    """An invalid sampling parameter (the message names it)."""


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
    """One raw PRNG key per row from integer seeds [B] -> uint32 [B, 2]."""
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


def top_k_mask(logits, k, sorted_desc=None):
    """Keep the k largest logits of each row (ties with the k-th value are kept, like transformers); k=0 keeps all."""
    V = logits.shape[-1]
    if sorted_desc is None:
        sorted_desc = -jnp.sort(-logits, axis=-1)
    kk = jnp.clip(jnp.where(k > 0, k, V), 1, V)
    kth = jnp.take_along_axis(sorted_desc, (kk - 1)[:, None], axis=-1)
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p_mask(logits, p, sorted_desc=None):
    """Nucleus: keep the smallest set of most likely tokens whose probability mass reaches p (at least one).

    A token is kept when the mass of the tokens strictly more likely than it is below p; p=1 keeps all."""
    if sorted_desc is None:
        sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs          # mass strictly ahead of each sorted position
    keep_sorted = (before < p[:, None]) | (jnp.arange(logits.shape[-1]) == 0)
    # threshold = the smallest kept logit of the row
    thresh = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    out = jnp.where(logits < thresh, NEG_INF, logits)
    return jnp.where((p >= 1.0)[:, None], logits, out)


def min_p_mask(logits, min_p):
    """Drop tokens whose probability is below min_p times the most likely token's probability."""
    probs = jax.nn.softmax(logits, axis=-1)
    top = jnp.max(probs, axis=-1, keepdims=True)
    return jnp.where(probs < min_p[:, None] * top, NEG_INF, logits)


def process_logits(logits, params: dict, flags: SamplingFlags, seen=None):
    """All filtering stages: the logits a draw is made from (masked entries are -inf)."""
    logits = logits.astype(jnp.float32)
    if flags.repetition:
        logits = repetition_penalty(logits, seen, params["repetition_penalty"])
    if not flags.sample:
        return logits
    logits = apply_temperature(logits, params["temperature"])
    sorted_desc = -jnp.sort(-logits, axis=-1) if (flags.top_k or flags.top_p) else None
    if flags.top_k:
        logits = top_k_mask(logits, params["top_k"], sorted_desc)
        if flags.top_p:
            sorted_desc = -jnp.sort(-logits, axis=-1)
    if flags.top_p:
        logits = top_p_mask(logits, params["top_p"], sorted_desc)
    if flags.min_p:
        logits = min_p_mask(logits, params["min_p"])
    return logits


def sample(logits, params: dict, flags: SamplingFlags, keys=None, positions=None, seen=None):
    """Next token per row [B] int32. keys [B, 2] uint32 (row_keys), positions [B] int32 (the position of the
    token being drawn; folded into the key). Rows with temperature 0 take the argmax."""
    proc = process_logits(logits, params, flags, seen)
    greedy = jnp.argmax(proc, axis=-1).astype(jnp.int32)
    if not flags.sample:
        return greedy

    def draw(key, pos, row):
        k = jax.random.fold_in(jax.random.wrap_key_data(key), pos)
        return jax.random.categorical(k, row)

    drawn = jax.vmap(draw)(keys, positions, proc).astype(jnp.int32)
    return jnp.where(params["temperature"] > 0, drawn, greedy)


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
