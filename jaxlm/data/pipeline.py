"""The deterministic global data order, built on grain.

Every sample of every step is a pure function of (config, tokenizer, seed, step):

    step t -> phase p (PhaseSpec schedule) -> per-source counts (multinomial with the phase weights, seeded)
           -> slot j: source s, draw k = samples s contributed before t + rank of j among s's slots this step
           -> source s's segment (a new one whenever the source's FIM setting changes between phases)
           -> epoch e and index i within the epoch -> seeded permutation (numpy; grain index_shuffle for huge
              epochs) -> packed sample
              (documents of the epoch in a seeded order, FIM applied per document with seeded decisions,
               joined with EOS, cut into seq_len+1 windows).

So `batch_at(t)` regenerates any step without iterating, `export_order` can publish the exact token ids of any
range of steps (LLM360 publishes its data order), each process reads only its slice of the global batch
(`process_index`, `process_count`), and the iterator state is just the next step (JSON). The iterator is a grain
`MapDataset` over steps turned into an `IterDataset` (optionally with prefetch threads), so grain's orbax
checkpoint handler can save it too (`Pipeline.checkpointable`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from typing import Any, Iterable, Mapping

import grain
import numpy as np

from jaxlm.data import fim as fim_lib
from jaxlm.data.corpus import embedded_corpus
from jaxlm.data.mixture import Mixture, PhaseSpec
from jaxlm.data.pack import OverlayStore, PackedStream, TokenStore
from jaxlm.data.sources import DataError, Documents, SourceSpec, cache_dir, open_source
from jaxlm.data.tokenizer import Tokenizer, as_tokenizer
from jaxlm.errors import ConfigError

_TAG_ORDER, _TAG_FIM, _TAG_PERM = 0x6F7264, 0x66696D, 0x70726D
_STATE_VERSION = 1
_BIG = 2**62  # the iterator never runs out: after the last phase the last phase continues
_MATERIALIZE = 1 << 24  # epochs up to this many samples use a stored numpy permutation


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """seq_len: tokens per input row (samples hold seq_len+1); global_batch: rows per step over all processes;
    sources: name -> SourceSpec (source_id = index into sorted(sources)); phases: the PhaseSpec schedule;
    shuffle: False keeps documents and samples in file order (debugging); prefetch: grain read threads
    (0 = synchronous); disk_cache: cache token ids under $JAXLM_CACHE/data."""

    seq_len: int
    global_batch: int
    seed: int = 0
    sources: Mapping[str, SourceSpec] = dataclasses.field(default_factory=dict)
    phases: tuple[PhaseSpec, ...] = ()
    shuffle: bool = True
    prefetch: int = 0
    disk_cache: bool = True

    def __post_init__(self):
        object.__setattr__(self, "phases", tuple(self.phases))
        for field, lo in (("seq_len", 2), ("global_batch", 1)):
            v = getattr(self, field)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"DataConfig.{field} must be an integer >= {lo}, got {v!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"DataConfig.seed must be an integer in [0, 2**32), got {self.seed!r}")
        for field in ("seq_len", "global_batch", "seed"):
            object.__setattr__(self, field, int(getattr(self, field)))
        if not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise ConfigError(f"DataConfig.prefetch must be an integer >= 0, got {self.prefetch!r}")
        if not isinstance(self.sources, Mapping) or not self.sources:
            raise ConfigError("DataConfig.sources must be a non-empty mapping name -> SourceSpec")
        for k, v in self.sources.items():
            if not isinstance(k, str) or not k:
                raise ConfigError(f"DataConfig.sources: source names must be non-empty strings, got {k!r}")
            if not isinstance(v, SourceSpec):
                raise ConfigError(f"DataConfig.sources[{k!r}] must be a SourceSpec, got {type(v).__name__}")
        Mixture(self.phases, sorted(self.sources), self.global_batch, self.seed)  # validates the phases

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def summary(self) -> dict:
        """JSON description of everything that determines the data order."""
        return {"seq_len": int(self.seq_len), "global_batch": int(self.global_batch), "seed": int(self.seed),
                "shuffle": bool(self.shuffle),
                "sources": {k: f"{v.kind}:{v.describe()}" for k, v in sorted(self.sources.items())},
                "phases": [{"steps": int(p.steps), "weights": {k: float(w) for k, w in sorted(p.weights.items())},
                            "fim_rate": float(p.fim_rate), "fim_spm_rate": float(p.fim_spm_rate)}
                           for p in self.phases]}


# ------------------------------------------------------------------------------------------ tokenization
_TOKENIZED: dict = {}
_TOK_LOCK = threading.Lock()


def tokenize_documents(docs: Documents, tokenizer: Tokenizer, disk_cache: bool = True) -> TokenStore:
    """All documents' token ids (no BOS/EOS), cached in memory and on disk keyed by content + vocabulary."""
    key = (docs.fingerprint, tokenizer.fingerprint or id(tokenizer))
    with _TOK_LOCK:
        hit = _TOKENIZED.get(key)
    if hit is not None:
        return hit
    path = None
    if disk_cache and tokenizer.fingerprint:
        path = os.path.join(cache_dir(), f"tokens-{docs.fingerprint}-{tokenizer.fingerprint}.npz")
    store = None
    if path and os.path.exists(path):
        try:
            store = TokenStore.load(path)
        except (OSError, ValueError, KeyError):
            store = None  # a damaged cache file: rebuild it
    if store is None or len(store) != len(docs):
        arrays = []
        for i in range(0, len(docs), 512):
            arrays.extend(tokenizer.encode_batch(docs.texts[i:i + 512]))
        store = TokenStore.from_arrays(arrays)
        if path:
            store.save(path)
    with _TOK_LOCK:
        _TOKENIZED[key] = store
    return store


def _hash32(*parts) -> int:
    h = hashlib.blake2b(json.dumps(parts).encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


class _Epoch:
    def __init__(self, stream: PackedStream, perm):
        self.stream, self.perm = stream, perm


class SourceStream:
    """One source's packed samples, by (segment, FIM setting, draw index)."""

    def __init__(self, name: str, spec: SourceSpec, tokenizer: Tokenizer, seq_len: int, seed: int,
                 shuffle: bool, disk_cache: bool):
        self.name, self.spec, self.tok = name, spec, tokenizer
        self.seq_len, self.seed, self.shuffle, self.disk_cache = seq_len, seed, shuffle, disk_cache
        self.docs = open_source(spec)
        self.base = tokenize_documents(self.docs, tokenizer, disk_cache)
        self.key = _hash32("source", name)
        self.n_base_samples = (int(self.base.lengths.sum()) + len(self.base)) // (seq_len + 1)
        if self.n_base_samples < 1:
            raise DataError(f"source {name!r} ({spec.describe()}) has {int(self.base.lengths.sum())} tokens in "
                            f"{len(self.base)} documents: fewer than one sample of seq_len+1 = {seq_len + 1}")
        self._char_lens = None
        self._epochs: dict[tuple, _Epoch] = {}
        self._lock = threading.RLock()

    def _fim_store(self, seg: int, cfg: tuple[float, float], e: int):
        rate, spm = cfg
        fim_ids = fim_lib.require_fim(self.tok, f"source {self.name!r}")
        path = None
        if self.disk_cache and self.tok.fingerprint:
            tag = hashlib.blake2b(json.dumps([self.docs.fingerprint, self.tok.fingerprint, self.seed, self.key, seg,
                                              e, rate, spm]).encode(), digest_size=12).hexdigest()
            path = os.path.join(cache_dir(), f"fim-{tag}.npz")
            if os.path.exists(path):
                try:
                    with np.load(path) as z:
                        return OverlayStore(self.base, TokenStore(z["flat"].astype(np.int32), z["offsets"]),
                                            z["index"])
                except (OSError, ValueError, KeyError):
                    pass
        if self._char_lens is None:
            self._char_lens = np.fromiter((len(t) for t in self.docs.texts), np.int64, len(self.docs))
        rng = np.random.default_rng([self.seed, _TAG_FIM, self.key, seg, e])
        plan = fim_lib.plan(self._char_lens, rate, spm, rng)
        out = fim_lib.transform(self.docs.texts, plan, self.tok, fim_ids)
        ids = sorted(out)
        index = np.full(len(self.docs), -1, np.int64)
        index[ids] = np.arange(len(ids))
        over = TokenStore.from_arrays([out[i] for i in ids])
        if path:
            tmp = f"{path}.{os.getpid()}.tmp.npz"
            np.savez(tmp, flat=over.flat.astype(np.uint16 if self.tok.vocab_size <= 65536 else np.int32),
                     offsets=over.offsets, index=index)
            os.replace(tmp, path)
        return OverlayStore(self.base, over, index)

    def epoch(self, seg: int, cfg: tuple[float, float], e: int) -> _Epoch:
        key = (seg, cfg, e)
        with self._lock:
            hit = self._epochs.get(key)
            if hit is not None:
                return hit
            n = len(self.base)
            if self.shuffle:
                order = np.random.default_rng([self.seed, _TAG_ORDER, self.key, seg, e]).permutation(n)
            else:
                order = np.arange(n)
            store = self._fim_store(seg, cfg, e) if cfg[0] > 0 else self.base
            stream = PackedStream(store, order, self.tok.eos_id, self.seq_len)
            perm = None
            n_perm = self.n_base_samples
            if self.shuffle and n_perm > 1:
                pseed = _hash32("perm", self.seed, self.key, seg, e)
                if n_perm <= _MATERIALIZE:
                    perm = np.random.default_rng([pseed, _TAG_PERM]).permutation(n_perm)
                else:  # grain's Feistel index_shuffle: O(1) memory for very large epochs
                    perm = grain.MapDataset.range(n_perm).shuffle(seed=pseed)
            ep = _Epoch(stream, perm)
            if len(self._epochs) >= 8:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = ep
            return ep

    def locate(self, seg: int, cfg: tuple[float, float], k: int) -> tuple[int, int]:
        """Draw k of a segment -> (epoch, index within the epoch). Every epoch has `n_base_samples` samples (the
        packed size without FIM), so any draw is located without building earlier epochs. A FIM epoch's stream
        is slightly longer (sentinels, split tokens): its samples past that size, the tail of that epoch's
        shuffled document order, are not used."""
        return divmod(k, self.n_base_samples)

    def sample(self, seg: int, cfg: tuple[float, float], k: int) -> np.ndarray:
        e, i = self.locate(seg, cfg, k)
        ep = self.epoch(seg, cfg, e)
        j = int(ep.perm[i]) if ep.perm is not None else i
        return ep.stream.sample(j % ep.stream.n_samples)


class _StepDataset(grain.MapDataset):
    """grain MapDataset over training steps: element t is this process's slice of the global batch of step t."""

    def __init__(self, pipeline: "Pipeline"):
        super().__init__()
        self._pipeline = pipeline

    def __len__(self) -> int:
        return _BIG

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._pipeline.local_batch_at(int(index))

    def __str__(self) -> str:
        return "jaxlm.data.StepDataset"


class Pipeline:
    """Iterator over training batches in the deterministic global order (see the module docstring)."""

    def __init__(self, cfg: DataConfig, tokenizer, process_index: int = 0, process_count: int = 1):
        if not isinstance(cfg, DataConfig):
            raise ConfigError(f"build_pipeline: expected a DataConfig, got {type(cfg).__name__}")
        if not isinstance(process_count, int) or process_count < 1:
            raise ConfigError(f"process_count must be an integer >= 1, got {process_count!r}")
        if not isinstance(process_index, int) or not 0 <= process_index < process_count:
            raise ConfigError(f"process_index must be in [0, {process_count}), got {process_index!r}")
        if cfg.global_batch % process_count:
            raise ConfigError(f"DataConfig.global_batch={cfg.global_batch} is not divisible by "
                              f"process_count={process_count}")
        self.config = cfg
        self.tokenizer = as_tokenizer(tokenizer)
        self.process_index, self.process_count = process_index, process_count
        self.local_batch = cfg.global_batch // process_count
        self.source_names = sorted(cfg.sources)
        self.mixture = Mixture(cfg.phases, self.source_names, cfg.global_batch, cfg.seed, cfg.shuffle)
        self._check_fim()
        self.streams = {n: SourceStream(n, cfg.sources[n], self.tokenizer, cfg.seq_len, cfg.seed, cfg.shuffle,
                                        cfg.disk_cache) for n in self.source_names}
        self._segments = self._plan_segments()
        self._summary = dict(cfg.summary(), tokenizer=self.tokenizer.fingerprint or self.tokenizer.name,
                             documents={n: s.docs.fingerprint for n, s in self.streams.items()})
        self._dataset = _StepDataset(self)
        self._iter_ds = self._dataset.to_iter_dataset(
            grain.ReadOptions(num_threads=cfg.prefetch, prefetch_buffer_size=2 * cfg.prefetch))
        self._it = iter(self._iter_ds)

    # ---------------------------------------------------------------- schedule
    def _check_fim(self):
        for i, ph in enumerate(self.config.phases):
            coded = [n for n in self.source_names if self.config.sources[n].kind == "code" and ph.weights.get(n, 0)]
            if ph.fim_rate > 0 and coded:
                fim_lib.require_fim(self.tokenizer, f"DataConfig.phases[{i}].fim_rate={ph.fim_rate} (sources {coded})")

    def _fim_cfg(self, name: str, ph: PhaseSpec) -> tuple[float, float]:
        if self.config.sources[name].kind == "code" and ph.fim_rate > 0:
            return float(ph.fim_rate), float(ph.fim_spm_rate)
        return 0.0, 0.0

    def _plan_segments(self):
        """Per phase, per source: (segment id, FIM setting, first draw of the segment)."""
        out, prev = [], {}
        for p, ph in enumerate(self.config.phases):
            row = {}
            start = self.mixture.draws_before(int(self.mixture.starts[p]))
            for s, n in enumerate(self.source_names):
                cfg = self._fim_cfg(n, ph)
                if n in prev and prev[n][1] == cfg:
                    row[n] = prev[n]
                else:
                    row[n] = (prev[n][0] + 1 if n in prev else 0, cfg, int(start[s]))
            out.append(row)
            prev = row
        return out

    def phase_at(self, step: int) -> tuple[int, PhaseSpec]:
        p = self.mixture.phase_at(int(step))
        return p, self.config.phases[p]

    @property
    def total_steps(self) -> int:
        return self.config.total_steps

    # ---------------------------------------------------------------- batches
    def _rows(self, step: int, lo: int, hi: int) -> dict[str, Any]:
        if step < 0:
            raise ConfigError(f"step={step}: must be >= 0")
        p = self.mixture.phase_at(step)
        src, draw = self.mixture.slots(step)
        segs = self._segments[p]
        toks = np.empty((hi - lo, self.config.seq_len + 1), np.int32)
        for r, j in enumerate(range(lo, hi)):
            name = self.source_names[src[j]]
            seg, cfg, k0 = segs[name]
            toks[r] = self.streams[name].sample(seg, cfg, int(draw[j]) - k0)
        return {"inputs": np.ascontiguousarray(toks[:, :-1]), "targets": np.ascontiguousarray(toks[:, 1:]),
                "source_id": src[lo:hi].copy(), "step": int(step)}

    def batch_at(self, step: int) -> dict[str, Any]:
        """The global batch of `step` (all processes' rows), regenerated without iterating."""
        return self._rows(int(step), 0, self.config.global_batch)

    def local_batch_at(self, step: int) -> dict[str, Any]:
        """This process's rows of the global batch of `step`."""
        lo = self.process_index * self.local_batch
        return self._rows(int(step), lo, lo + self.local_batch)

    def next(self) -> dict[str, Any]:
        return next(self._it)

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    # ---------------------------------------------------------------- state
    def get_state(self) -> dict:
        """JSON-serializable iterator state (the next step, plus what identifies the data order)."""
        gs = self._it.get_state()
        return {"version": _STATE_VERSION, "step": int(gs["next_index"]), "grain": gs, "config": self._summary}

    def set_state(self, state: dict) -> None:
        if isinstance(state, (str, bytes)):
            state = json.loads(state)
        if not isinstance(state, dict) or "step" not in state:
            raise ConfigError(f"data iterator state must be a dict with a 'step' (from Pipeline.get_state), "
                              f"got {str(state)[:80]!r}")
        saved = state.get("config")
        if saved is not None and saved != self._summary:
            diff = [k for k in sorted(set(saved) | set(self._summary)) if saved.get(k) != self._summary.get(k)]
            detail = "; ".join(f"{k}: saved {saved.get(k)!r} != now {self._summary.get(k)!r}" for k in diff)
            raise ConfigError(f"data iterator state comes from a different data config ({detail[:1500]})")
        step = int(state["step"])
        if step < 0:
            raise ConfigError(f"data iterator state: step must be >= 0, got {step}")
        self.seek(step)

    def seek(self, step: int) -> None:
        """Continue from `step` (the next batch is the batch of that step)."""
        self._it = iter(self._iter_ds)
        self._it.set_state({"next_index": int(step)})

    @property
    def step(self) -> int:
        return int(self._it.get_state()["next_index"])

    def checkpointable(self):
        """An object that grain's orbax handler can save/restore:
        `ocp.args.Composite(data=grain.checkpoint.CheckpointSave(pipe.checkpointable()))`."""
        return _GrainCheckpointable(self)

    # ---------------------------------------------------------------- publication
    def export_order(self, path, steps: Iterable[int]) -> str:
        """Write the token ids of the global batches of `steps`: .npz (tokens [n, B, seq_len+1], source_id [n, B],
        steps [n], source_names, config), .npy (tokens only) or .jsonl (one step per line)."""
        path = os.fspath(path)
        steps = [int(s) for s in steps]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if path.endswith(".jsonl"):
            with open(path, "w") as f:
                for s in steps:
                    b = self.batch_at(s)
                    tok = np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1)
                    f.write(json.dumps({"step": s, "source": [self.source_names[i] for i in b["source_id"]],
                                        "tokens": tok.tolist()}) + "\n")
            return path
        B, W = self.config.global_batch, self.config.seq_len + 1
        tokens = np.empty((len(steps), B, W), np.int32)
        source_id = np.empty((len(steps), B), np.int32)
        for r, s in enumerate(steps):
            b = self.batch_at(s)
            tokens[r, :, :-1], tokens[r, :, -1] = b["inputs"], b["targets"][:, -1]
            source_id[r] = b["source_id"]
        if path.endswith(".npy"):
            np.save(path, tokens)
        else:
            if not path.endswith(".npz"):
                path += ".npz"
            np.savez(path, tokens=tokens, source_id=source_id, steps=np.asarray(steps, np.int64),
                     source_names=np.asarray(self.source_names), config=np.asarray(json.dumps(self._summary)))
        return path


class _GrainCheckpointable:
    """Adapter for grain.checkpoint.CheckpointHandler (it stores get_state() bytes per process)."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    def get_state(self) -> bytes:
        return json.dumps(self.pipeline.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.pipeline.set_state(json.loads(state))

    def start_prefetch(self) -> None:
        pass


def build_pipeline(cfg: DataConfig, tokenizer, process_index: int = 0, process_count: int = 1) -> Pipeline:
    """Tokenize (or load cached tokens for) every source and return the Pipeline positioned at step 0."""
    return Pipeline(cfg, tokenizer, process_index, process_count)


def build_eval_batches(tokenizer, source_name, seq_len: int, batch: int, max_batches: int | None = None, *,
                       sources: Mapping[str, SourceSpec] | None = None) -> list[dict[str, np.ndarray]]:
    """Held-out batches for perplexity: the source's documents in order, no FIM, packed like training data.

    source_name: a name in `sources` (default: the embedded corpus' held-out split, 'code' or 'language'),
    or a SourceSpec. Returns full batches only: dicts with inputs/targets int32 [batch, seq_len].
    """
    tok = as_tokenizer(tokenizer)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"build_eval_batches: seq_len must be an integer >= 2, got {seq_len!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"build_eval_batches: batch must be an integer >= 1, got {batch!r}")
    if isinstance(source_name, SourceSpec):
        spec, label = source_name, source_name.describe()
    else:
        pool = embedded_corpus("heldout") if sources is None else sources
        if source_name not in pool:
            raise ConfigError(f"build_eval_batches: unknown source {source_name!r} (known: {sorted(pool)})")
        spec, label = pool[source_name], source_name
    docs = open_source(spec)
    store = tokenize_documents(docs, tok)
    stream = PackedStream(store, np.arange(len(store)), tok.eos_id, seq_len)
    n = stream.n_samples // batch
    if max_batches is not None:
        n = min(n, int(max_batches))
    if n < 1:
        raise DataError(f"held-out source {label!r} has {stream.n_samples} samples of {seq_len + 1} tokens: "
                        f"fewer than one batch of {batch}")
    out = []
    for b in range(n):
        toks = np.stack([stream.sample(b * batch + r) for r in range(batch)])
        out.append({"inputs": np.ascontiguousarray(toks[:, :-1]), "targets": np.ascontiguousarray(toks[:, 1:])})
    return out
