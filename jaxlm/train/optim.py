"""AdamW with each paper's learning-rate schedule, muP multipliers, weight-decay masks and clipping.

The update applied to a parameter p with gradient g at step s is

    p <- p - lr(s) * mult(p) * (adam(g) + wd * decay(p) * p)

(decoupled weight decay as in torch AdamW: it is scaled by the learning rate, and so by the muP multiplier too,
like Cerebras' per-parameter-group `adjust_learning_rate`). Gradients are clipped to a global norm first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlm.train.config import LRSchedule, OptimConfig, RunConfig

# ----------------------------------------------------------------------------------------------- schedules


def phase_lr(sched: LRSchedule, t, phase_steps: int):
    """Learning rate at step t (0-based) inside a phase; works on Python numbers and on traced arrays."""
    xp = jnp if isinstance(t, jax.Array) or not isinstance(t, (int, float)) else math
    w = sched.warmup
    decay = sched.decay_steps if sched.decay_steps > 0 else max(phase_steps - w, 1)
    if xp is math:
        if w > 0 and t < w:
            return sched.peak * t / w
        if sched.kind == "constant":
            return sched.peak
        frac = min(max((t - w) / decay, 0.0), 1.0)
        if sched.kind == "linear":
            return sched.peak + (sched.end - sched.peak) * frac
        return sched.end + 0.5 * (1.0 + math.cos(math.pi * frac)) * (sched.peak - sched.end)
    t = jnp.asarray(t, jnp.float32)
    warm = sched.peak * t / max(w, 1)
    frac = jnp.clip((t - w) / decay, 0.0, 1.0)
    if sched.kind == "constant":
        after = jnp.asarray(sched.peak, jnp.float32)
    elif sched.kind == "linear":
        after = sched.peak + (sched.end - sched.peak) * frac
    else:
        after = sched.end + 0.5 * (1.0 + jnp.cos(jnp.pi * frac)) * (sched.peak - sched.end)
    return jnp.where(t < w, warm, after) if w > 0 else after


def make_schedule(cfg: RunConfig):
    """Global step -> learning rate across all phases (each phase restarts its own warmup/decay)."""
    bounds = cfg.phase_bounds()
    phases = cfg.phases

    def schedule(step):
        if isinstance(step, int):
            for (a, b), p in zip(bounds, phases):
                if step < b or (a, b) == bounds[-1]:
                    return phase_lr(p.lr, step - a, p.steps)
        step = jnp.asarray(step, jnp.int32)
        lr = jnp.float32(0.0)
        for i, ((a, b), p) in enumerate(zip(bounds, phases)):
            inside = (step >= a) if i == len(phases) - 1 else ((step >= a) & (step < b))
            lr = jnp.where(inside, phase_lr(p.lr, step - a, p.steps), lr)
        return lr

    return schedule


# ----------------------------------------------------------------------------------------------- leaf kinds


def leaf_kind(path: tuple[str, ...]) -> str:
    """Classify a parameter by its path in the model: embed | norm | bias | head | hidden | kernel."""
    names = [str(p) for p in path]
    last = names[-1]
    if names[0] == "embed":
        return "embed"
    if any(n.endswith("norm") for n in names):
        return "norm"
    if last == "bias":
        return "bias"
    if names[0] == "lm_head":
        return "head"
    if names[0] in ("layers", "shared_mlp"):
        return "hidden"
    return "kernel"


def _path_names(path) -> tuple[str, ...]:
    out = []
    for k in path:
        out.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return tuple(out)


def leaf_kinds(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: leaf_kind(_path_names(p)), params)


def lr_multipliers(params, ocfg: OptimConfig):
    """muP: decoder-layer matrices ('hidden' kernels) get mup_width_scale, everything else 1."""
    s = ocfg.mup_width_scale
    return jax.tree.map(lambda k: float(s) if (s is not None and k == "hidden") else 1.0, leaf_kinds(params))


def decay_mask(params, ocfg: OptimConfig):
    excluded = set(ocfg.no_decay)

    def keep(k):
        kind = "kernel" if k == "hidden" else k
        return not (kind in excluded or k in excluded)

    return jax.tree.map(keep, leaf_kinds(params))


class ScaleByTreeState(NamedTuple):
    pass


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiply each update leaf by a fixed Python float (skipped where it is 1)."""

    def init(params):
        del params
        return ScaleByTreeState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u if m == 1.0 else u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: RunConfig, params) -> optax.GradientTransformation:
    o = cfg.optim
    schedule = make_schedule(cfg)
    chain = []
    if o.clip_norm:
        chain.append(optax.clip_by_global_norm(o.clip_norm))
    chain.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    if o.weight_decay:
        chain.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask(params, o)))
    chain.append(optax.scale_by_schedule(lambda count: -schedule(count)))
    if o.mup_width_scale is not None:
        chain.append(scale_by_tree(lr_multipliers(params, o)))
    return optax.chain(*chain)
