"""AdamW with each paper's learning-rate schedule, muP multipliers, weight-decay masks and clipping.

The update applied to a parameter p with gradient g at step s is

    p <- p - lr(s) * mult(p) * (adam(g) + wd * decay(p) * p)

(decoupled weight decay as in torch AdamW: it is scaled by the learning rate, and so by the muP multiplier too,
like Cerebras' per-parameter-group `adjust_learning_rate`). Gradients are clipped to a global norm first.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.errors import ConfigError
from jaxlm.train.config import LRSchedule, OptimConfig, RunConfig

# ----------------------------------------------------------------------------------------------- schedules


def phase_lr(sched: LRSchedule, t, phase_steps: int):
    """Learning rate at step t (0-based) inside a phase; works on Python numbers and on traced arrays."""
    xp = jnp if isinstance(t, jax.Array) or not isinstance(t, (int, float)) else math
    w = sched.warmup
    decay = sched.decay_steps if sched.decay_steps > 0 else max(phase_steps - w, 1)
    w0 = sched.warmup_from
    if sched.kind == "wsd":
        decay = max(sched.decay_steps, 1)
        w_end = max(phase_steps - decay, w)  # decay starts here (the stable part ends)
    else:
        w_end = w
    if xp is math:
        if w > 0 and t < w:
            return w0 + (sched.peak - w0) * t / w
        if sched.kind == "constant":
            return sched.peak
        frac = min(max((t - w_end) / decay, 0.0), 1.0)
        if sched.kind == "wsd":
            return sched.peak + (sched.end - sched.peak) * frac
        if sched.kind == "linear":
            return sched.peak + (sched.end - sched.peak) * frac
        return sched.end + 0.5 * (1.0 + math.cos(math.pi * frac)) * (sched.peak - sched.end)
    t = jnp.asarray(t, jnp.float32)
    warm = w0 + (sched.peak - w0) * t / max(w, 1)
    frac = jnp.clip((t - w_end) / decay, 0.0, 1.0)
    if sched.kind == "constant":
        after = jnp.asarray(sched.peak, jnp.float32)
    elif sched.kind in ("linear", "wsd"):
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


# ----------------------------------------------------------------------------------------------- freezing


def path_str(path) -> str:
    """'/'-joined names of a pytree path (the string that phase `trainable` / `frozen` patterns search)."""
    return "/".join(_path_names(path))


def phase_masks(cfg: RunConfig, params) -> list | None:
    """Per phase, a tree of bools like `params` (True = trains in that phase); None when every phase trains all."""
    if not any(p.trainable or p.frozen for p in cfg.phases):
        return None
    paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    treedef = jax.tree.structure(params)
    out = []
    for i, ph in enumerate(cfg.phases):
        for field_ in ("trainable", "frozen"):
            for pat in getattr(ph, field_):
                if not any(re.search(pat, s) for s in paths):
                    raise ConfigError(f"phases.{i}.{field_}: pattern {pat!r} matches no parameter (paths look "
                                      f"like {paths[:3]})")
        live = [(not ph.trainable or any(re.search(q, s) for q in ph.trainable))
                and not any(re.search(q, s) for q in ph.frozen) for s in paths]
        if not any(live):
            raise ConfigError(f"phases.{i} ({ph.name}): trainable={ph.trainable} frozen={ph.frozen} leave no "
                              f"parameter to train")
        out.append(jax.tree.unflatten(treedef, live))
    return out


class FreezeState(NamedTuple):
    count: jax.Array
    inner: optax.OptState


def _live_leaves(table, starts: list[int], count):
    """Per leaf: True (trains in every phase) or a traced bool (trains in the phase `count` falls in)."""
    phase = sum((count >= s).astype(jnp.int32) for s in starts[1:]) if len(starts) > 1 else 0
    return jax.tree.map(lambda m: True if m.all() else jnp.asarray(m)[phase], table)


def keep(new, old, lv):
    """`new` where the leaf trains (lv True or traced True), else `old`."""
    return new if lv is True else jnp.where(lv, new, old)


def trained_grads(cfg: RunConfig, grads, step):
    """`grads` with the leaves frozen at `step` zeroed (the gradients the optimizer actually uses; for metrics)."""
    masks = phase_masks(cfg, grads)
    if masks is None:
        return grads
    table = jax.tree.map(lambda *m: np.array(m, bool), *masks)
    live = _live_leaves(table, [a for a, _ in cfg.phase_bounds()], step)
    return jax.tree.map(lambda g, lv: keep(g, jnp.zeros_like(g), lv), grads, live)


def freeze_by_phase(inner: optax.GradientTransformation, masks: list, starts: list[int]) -> optax.GradientTransformation:
    """Masked updates: in phase i (steps >= starts[i]) only leaves with masks[i] True move. Frozen leaves get a zero
    update and their optimizer state (moments) is kept exactly as it was; the state's structure never changes, so
    one checkpoint layout serves every phase."""
    table = jax.tree.map(lambda *m: np.array(m, bool), *masks)  # per leaf: [n_phases]

    def init(params):
        return FreezeState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(grads, state, params=None):
        live = _live_leaves(table, starts, state.count)
        grads = jax.tree.map(lambda g, lv: keep(g, jnp.zeros_like(g), lv), grads, live)
        updates, new_inner = inner.update(grads, state.inner, params)
        updates = jax.tree.map(lambda u, lv: keep(u, jnp.zeros_like(u), lv), updates, live)
        pstruct = jax.tree.structure(grads)

        def like_params(x):
            try:
                return jax.tree.structure(x) == pstruct
            except Exception:
                return False

        def select(new, old):
            if like_params(new):
                return jax.tree.map(keep, new, old, live)
            return new

        new_inner = jax.tree.map(select, new_inner, state.inner, is_leaf=like_params)
        return updates, FreezeState(state.count + 1, new_inner)

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
    tx = optax.chain(*chain)
    masks = phase_masks(cfg, params)
    if masks is not None:
        tx = freeze_by_phase(tx, masks, [a for a, _ in cfg.phase_bounds()])
    return tx
