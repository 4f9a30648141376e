"""Training configuration as plain frozen dataclasses, and dotted `--set a.b=v` overrides.

A run is a `RunConfig`: the model (a `DecoderConfig`), the optimizer, the loop settings and a tuple of phases.
Each phase names its data mixture (weights over source names), its FIM rate and its learning-rate schedule, so
a recipe (Crystal's three stages, Amber's single cosine run, MobiLlama) is data, not code.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from jaxlm.config import DecoderConfig
from jaxlm.errors import ConfigError


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate of one phase, as a function of the step inside the phase.

    Linear warmup `warmup_from` -> peak over `warmup` steps, then `kind` decay from peak towards `end` over
    `decay_steps` steps (may be longer than the phase: Crystal phase 1 stops part-way down its line), then flat at
    `end`. "wsd" (warmup-stable-decay) holds the peak and decays linearly to `end` over the LAST `decay_steps`
    steps of the phase.
    """

    kind: Literal["linear", "cosine", "constant", "wsd"] = "cosine"
    peak: float = 3e-4
    end: float = 3e-5
    warmup: int = 0
    decay_steps: int = 0  # 0 = until the end of the phase
    warmup_from: float = 0.0


@dataclass(frozen=True)
class PhaseConfig:
    name: str = "main"
    steps: int = 100
    weights: dict = field(default_factory=lambda: {"language": 1.0})
    fim_rate: float = 0.0
    fim_spm_rate: float = 0.5
    lr: LRSchedule = LRSchedule()
    # freezing: regular expressions searched in "/"-joined parameter paths (e.g. "layers/0/mixer/in_proj/kernel");
    # trainable=() trains every parameter, else only those matching one; `frozen` then removes matches.
    # Frozen parameters are bit-unchanged and keep their optimizer state until a later phase trains them again.
    trainable: tuple = ()
    frozen: tuple = ()


@dataclass(frozen=True)
class OptimConfig:
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float | None = 1.0
    # muP: hidden (decoder-layer) matrices get lr * mup_width_scale; embeddings, norms, biases, head: base lr
    mup_width_scale: float | None = None
    # leaf kinds excluded from weight decay: any of "norm", "bias", "embed", "head", "kernel"
    no_decay: tuple = ("norm", "bias")


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int = 128
    global_batch: int = 16
    grad_accum: int = 1
    seed: int = 0
    data_seed: int = 0
    log_every: int = 10
    eval_every: int = 0          # 0 = only at phase ends
    eval_batches: int = 2
    ckpt_every: int = 50
    keep_latest: int = 2         # the latest K checkpoints
    keep_release: int = 0        # plus this many evenly spaced "release" checkpoints over the whole run
    async_ckpt: bool = True
    lr: float | None = None      # convenience: sets every phase's peak (end scaled by the same factor)
    peak_tflops: float | None = None  # per device, for MFU; None = known table / measured on CPU


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    model: DecoderConfig | None = DecoderConfig()  # the LM's config (None for other Tasks, which hold theirs)
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    phases: tuple = (PhaseConfig(),)

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def phase_bounds(self) -> list[tuple[int, int]]:
        out, s = [], 0
        for p in self.phases:
            out.append((s, s + p.steps))
            s += p.steps
        return out

    def validate(self) -> "RunConfig":
        t = self.train
        if not self.phases:
            raise ConfigError("a run needs at least one phase")
        for i, p in enumerate(self.phases):
            if p.steps <= 0:
                raise ConfigError(f"phases.{i}.steps={p.steps} must be positive")
            if not p.weights or any(w < 0 for w in p.weights.values()) or sum(p.weights.values()) <= 0:
                raise ConfigError(f"phases.{i}.weights={p.weights}: need non-negative weights with a positive sum")
            if p.lr.kind not in ("linear", "cosine", "constant", "wsd"):
                raise ConfigError(f"phases.{i}.lr.kind={p.lr.kind!r}: expected linear, cosine, constant or wsd")
            for field_ in ("trainable", "frozen"):
                for pat in getattr(p, field_):
                    try:
                        re.compile(pat)
                    except (re.error, TypeError) as e:
                        raise ConfigError(f"phases.{i}.{field_}: {pat!r} is not a regular expression ({e})") from None
        if t.grad_accum <= 0 or t.global_batch % t.grad_accum:
            raise ConfigError(f"train.global_batch={t.global_batch} is not divisible by train.grad_accum={t.grad_accum}")
        if t.seq_len <= 0 or t.global_batch <= 0:
            raise ConfigError("train.seq_len and train.global_batch must be positive")
        if t.seq_len > getattr(self.model, "max_position_embeddings", t.seq_len):
            raise ConfigError(f"train.seq_len={t.seq_len} exceeds model.max_position_embeddings="
                              f"{self.model.max_position_embeddings}")
        return self


# ----------------------------------------------------------------------------------------------- overrides

def _parse_value(text: str, current: Any):
    if isinstance(current, bool) or current is None or isinstance(current, (dict, tuple, list)):
        low = text.strip().lower()
        if low in ("true", "false") and (isinstance(current, bool) or current is None):
            return low == "true"
        if low in ("none", "null"):
            return None
        try:
            v = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        return tuple(v) if isinstance(current, tuple) and isinstance(v, list) else v
    if isinstance(current, int) and not isinstance(current, bool):
        try:
            f = float(text)
        except ValueError:
            raise ConfigError(f"expected an integer, got {text!r}") from None
        if f != int(f):
            raise ConfigError(f"expected an integer, got {text!r}")
        return int(f)
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"expected a number, got {text!r}") from None
    return text


def _set(obj, parts: list[str], text: str, full: str):
    head, rest = parts[0], parts[1:]
    if isinstance(obj, tuple):
        idxs = range(len(obj)) if head == "*" else [_index(head, len(obj), full)]
        items = list(obj)
        for i in idxs:
            items[i] = _set(items[i], rest, text, full) if rest else _parse_value(text, items[i])
        return tuple(items)
    if isinstance(obj, dict):
        new = dict(obj)
        cur = obj.get(head, 0.0)
        new[head] = _set(cur, rest, text, full) if rest else _parse_value(text, cur)
        return new
    if dataclasses.is_dataclass(obj):
        names = {f.name for f in dataclasses.fields(obj)}
        if head not in names:
            raise ConfigError(f"--set {full}: {type(obj).__name__} has no field {head!r}; fields: {sorted(names)}")
        cur = getattr(obj, head)
        try:
            val = _set(cur, rest, text, full) if rest else _parse_value(text, cur)
        except ConfigError as e:
            if str(e).startswith("--set"):
                raise
            raise ConfigError(f"--set {full}: {e}") from None
        return dataclasses.replace(obj, **{head: val})
    raise ConfigError(f"--set {full}: cannot descend into {type(obj).__name__} at {head!r}")


def _index(text: str, n: int, full: str) -> int:
    try:
        i = int(text)
    except ValueError:
        raise ConfigError(f"--set {full}: expected a phase index or '*', got {text!r}") from None
    if not -n <= i < n:
        raise ConfigError(f"--set {full}: index {i} out of range (there are {n})")
    return i % n


def apply_overrides(cfg: RunConfig, items) -> RunConfig:
    """Apply `a.b.c=value` strings (phases take an index or '*'; `train.lr` sets every phase's peak)."""
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.weight_decay=0.0")
        key, text = item.split("=", 1)
        key = key.strip()
        cfg = _set(cfg, key.split("."), text.strip(), item)
    if cfg.train.lr is not None:
        cfg = set_peak_lr(cfg, cfg.train.lr)
    return cfg.validate()


def set_peak_lr(cfg: RunConfig, lr: float) -> RunConfig:
    """Every phase's peak becomes `lr` for the first phase scaled by each phase's ratio to it; ends keep their ratio."""
    base = cfg.phases[0].lr.peak or 1.0
    phases = []
    for p in cfg.phases:
        f = lr / base
        phases.append(dataclasses.replace(p, lr=dataclasses.replace(p.lr, peak=p.lr.peak * f, end=p.lr.end * f)))
    return dataclasses.replace(cfg, phases=tuple(phases), train=dataclasses.replace(cfg.train, lr=None))


def scale_steps(cfg: RunConfig, total: int) -> RunConfig:
    """Shrink (or grow) the run to `total` steps: phases keep their share, schedules keep their shape."""
    if total <= 0:
        raise ConfigError(f"--steps {total} must be positive")
    if total < len(cfg.phases):
        raise ConfigError(f"--steps {total}: need at least one step for each of the {len(cfg.phases)} phases")
    old = cfg.total_steps
    raw = [p.steps * total / old for p in cfg.phases]
    new = [max(1, int(math.floor(r))) for r in raw]
    while sum(new) < total:  # hand out the remainder to the largest fractional parts
        i = max(range(len(raw)), key=lambda j: raw[j] - new[j])
        new[i] += 1
    while sum(new) > total:
        i = max(range(len(new)), key=lambda j: new[j])
        new[i] -= 1
    phases = []
    for p, n in zip(cfg.phases, new):
        f = n / p.steps
        lr = dataclasses.replace(p.lr, warmup=int(round(p.lr.warmup * f)),
                                 decay_steps=int(round(p.lr.decay_steps * f)))
        phases.append(dataclasses.replace(p, steps=n, lr=lr))
    return dataclasses.replace(cfg, phases=tuple(phases))


def to_dict(obj) -> Any:
    """JSON-ready nested dict of a config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
