"""Schedules against the papers' formulas, muP multipliers and weight-decay masks in the real optimizer, --set."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import preset
from jaxlm.errors import ConfigError
from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, apply_overrides, scale_steps
from jaxlm.train.optim import decay_mask, lr_multipliers, make_optimizer, make_schedule, trained_grads
from jaxlm.train.state import abstract_params


def _both(sched, step):
    """Python-number and traced (jit) evaluations must agree; return the Python one."""
    a = sched(step)
    b = float(jax.jit(sched)(jnp.int32(step)))
    assert b == pytest.approx(a, rel=1e-5, abs=1e-12), step
    return a


def test_crystal_paper_schedule_matches_formulas():
    from recipes.crystal import PAPER

    s = make_schedule(PAPER)
    p1, p2, p3 = 79_721, 214_387, 27_728
    assert _both(s, 0) == 0.0
    assert _both(s, 43) == pytest.approx(0.012 * 43 / 86)
    assert _both(s, 86) == pytest.approx(0.012)
    k = 50_000
    assert _both(s, 86 + k) == pytest.approx(0.012 + (1.2408e-4 - 0.012) * k / 294_337)
    # phase 1 stops part-way down its line: last lr is far above the 1.2408e-4 target
    assert _both(s, p1 - 1) > 0.008
    # phase 2 restarts its own warmup, then continues linearly to 1.3679e-4 over 214,301 steps
    assert _both(s, p1) == 0.0
    assert _both(s, p1 + 86) == pytest.approx(0.0087825)
    assert _both(s, p1 + 86 + 100_000) == pytest.approx(0.0087825 + (1.3679e-4 - 0.0087825) * 100_000 / 214_301)
    assert _both(s, p1 + p2 - 1) == pytest.approx(1.3679e-4, rel=1e-3)
    # phase 3: warmup 276 to 0.002, linear over 27,452 steps to 2e-4
    b3 = p1 + p2
    assert _both(s, b3 + 138) == pytest.approx(0.002 * 138 / 276)
    assert _both(s, b3 + 276) == pytest.approx(0.002)
    assert _both(s, b3 + p3 - 1) == pytest.approx(2e-4 + (0.002 - 2e-4) / 27_452, rel=1e-3)


def test_amber_and_mobillama_cosine_schedules():
    from recipes.amber import PAPER as AMBER
    from recipes.mobillama import PAPER as MOBI

    s = make_schedule(AMBER)
    T, w = 274_320, 2000
    assert _both(s, 1000) == pytest.approx(3e-4 * 1000 / 2000)
    assert _both(s, w) == pytest.approx(3e-4)
    for step in (w + 1, 100_000, 200_000, T - 1):
        want = 3e-5 + 0.5 * (1 + math.cos(math.pi * (step - w) / (T - w))) * (3e-4 - 3e-5)
        assert _both(s, step) == pytest.approx(want, rel=1e-5)
    assert _both(s, w + (T - w) // 2) == pytest.approx((3e-4 + 3e-5) / 2, rel=1e-4)
    m = make_schedule(MOBI)
    assert _both(m, 2000) == pytest.approx(3e-5)
    assert _both(m, MOBI.total_steps - 1) == pytest.approx(3e-6, rel=1e-3)


def _tiny_params(name="crystalcoder-tiny"):
    _, abstract = abstract_params(preset(name))
    return jax.tree.map(lambda v: jnp.full(v.shape, 0.5, v.dtype), abstract)


def test_mup_multipliers_on_the_right_leaves():
    params = _tiny_params()
    mult = lr_multipliers(params, OptimConfig(mup_width_scale=0.0625))
    flat = {"/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_leaves_with_path(mult)}
    for path, m in flat.items():
        hidden = path.startswith("layers/") and path.endswith("kernel")
        assert m == (0.0625 if hidden else 1.0), path
    assert flat["embed"] == 1.0 and flat["layers/attn/q/bias"] == 1.0 and flat["final_norm/scale"] == 1.0
    assert flat["layers/mlp/gate/kernel"] == 0.0625 and flat["layers/attn/o/kernel"] == 0.0625

    # the real optimizer: Adam's first step moves every leaf by lr * multiplier (wd off, clip off)
    cfg = RunConfig(model=preset("crystalcoder-tiny"), optim=OptimConfig(weight_decay=0.0, clip_norm=None,
                                                                         mup_width_scale=0.0625, eps=1e-12),
                    phases=(PhaseConfig(steps=10, lr=LRSchedule("constant", 0.01, 0.01)),))
    tx = make_optimizer(cfg, params)
    grads = jax.tree.map(jnp.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params), params)
    for (path, u) in jax.tree_util.tree_leaves_with_path(upd):
        key = "/".join(str(k.key) for k in path)
        np.testing.assert_allclose(np.asarray(u), -0.01 * flat[key], rtol=1e-5, err_msg=key)


def test_weight_decay_mask_skips_norms_and_biases():
    params = _tiny_params("amber-tiny")
    mask = decay_mask(params, OptimConfig(no_decay=("norm", "bias")))
    assert mask["embed"] and mask["layers"]["attn"]["q"]["kernel"] and mask["lm_head"]["kernel"]
    assert not mask["final_norm"]["scale"] and not mask["layers"]["attn_norm"]["scale"]
    cfg = RunConfig(model=preset("amber-tiny"), optim=OptimConfig(weight_decay=0.1, clip_norm=None),
                    phases=(PhaseConfig(steps=10, lr=LRSchedule("constant", 0.5, 0.5)),))
    tx = make_optimizer(cfg, params)
    upd, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)  # zero grads: only decay
    np.testing.assert_allclose(np.asarray(upd["embed"]), -0.5 * 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(upd["layers"]["mlp"]["down"]["kernel"]), -0.025, rtol=1e-6)
    assert float(jnp.abs(upd["final_norm"]["scale"]).max()) == 0.0
    assert float(jnp.abs(upd["layers"]["mlp_norm"]["scale"]).max()) == 0.0


def test_clipping_bounds_the_update():
    """Clipping by the GLOBAL norm, seen through the real optimizer: with b1=b2=0 and eps=1, Adam's step is
    g / (|g| + 1) per element, which depends on the size of g (with eps=0 it would be sign(g) whether or not g
    was clipped). Above the threshold g is rescaled to norm 1 as a whole tree; below it g passes unchanged."""
    params = _tiny_params("amber-tiny")
    cfg = RunConfig(model=preset("amber-tiny"),
                    optim=OptimConfig(weight_decay=0.0, clip_norm=1.0, b1=0.0, b2=0.0, eps=1.0),
                    phases=(PhaseConfig(steps=10, lr=LRSchedule("constant", 1.0, 1.0)),))
    tx = make_optimizer(cfg, params)
    rng = np.random.default_rng(0)
    unit = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
    total = math.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in jax.tree.leaves(unit)))
    unit = jax.tree.map(lambda u: u / total, unit)  # global norm 1
    update = jax.jit(lambda g: tx.update(g, tx.init(params), params)[0])
    for norm, after_clip in ((100.0, 1.0), (0.5, 0.5)):
        upd = update(jax.tree.map(lambda u: norm * u, unit))
        for (path, u), gu in zip(jax.tree_util.tree_leaves_with_path(upd), jax.tree.leaves(unit)):
            gc = gu * after_clip  # unclipped, norm=100 would give -100u / (100|u| + 1): far from this
            np.testing.assert_allclose(np.asarray(u), -gc / (np.abs(gc) + 1.0), rtol=1e-4, atol=1e-8,
                                       err_msg=f"norm={norm} {jax.tree_util.keystr(path)}")


def test_overrides_and_step_scaling():
    from recipes.crystal import TINY

    cfg = apply_overrides(TINY, ["optim.weight_decay=0.0", "phases.1.fim_rate=0.5", "model.hidden_size=32",
                                 "phases.*.lr.warmup=3", "train.global_batch=32"])
    assert cfg.optim.weight_decay == 0.0 and cfg.phases[1].fim_rate == 0.5 and cfg.model.hidden_size == 32
    assert all(p.lr.warmup == 3 for p in cfg.phases) and cfg.train.global_batch == 32
    cfg = apply_overrides(TINY, ["train.lr=0.024"])  # every peak doubles, ratios kept
    assert [p.lr.peak for p in cfg.phases] == pytest.approx([0.024, 2 * 0.0087825, 0.004])
    with pytest.raises(ConfigError, match="no field 'hiden_size'"):
        apply_overrides(TINY, ["model.hiden_size=3"])
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_overrides(TINY, ["train.global_batch=abc"])
    with pytest.raises(ConfigError, match="index 7 out of range"):
        apply_overrides(TINY, ["phases.7.steps=3"])
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum"):
        apply_overrides(TINY, ["train.grad_accum=3"])
    small = scale_steps(TINY, 30)
    assert [p.steps for p in small.phases] == [10, 10, 10]
    # the schedule keeps its shape: phase-1 decay horizon stays ~3.69x the phase
    assert small.phases[0].lr.decay_steps == round(TINY.phases[0].lr.decay_steps * 10 / TINY.phases[0].steps)


def test_trained_grads_zero_the_leaves_frozen_in_the_current_phase():
    """The grad_norm metric is taken over these: frozen leaves' gradients are computed but never applied."""
    lr = LRSchedule("constant", 1e-2, 1e-2)
    cfg = RunConfig(name="t", model=None, phases=(PhaseConfig("all", 2, lr=lr),
                                                  PhaseConfig("body", 3, lr=lr, frozen=("^head/",)),
                                                  PhaseConfig("head", 2, lr=lr, trainable=("^head/",))))
    grads = {"head": {"w": jnp.full((2, 3), 2.0)}, "body": {"w": jnp.full((4,), 1.0)}}
    norm = jax.jit(lambda g, s: jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(trained_grads(cfg, g, s)))))
    expect = {0: math.sqrt(24 + 4), 1: math.sqrt(28), 2: 2.0, 4: 2.0, 5: math.sqrt(24), 6: math.sqrt(24)}
    for step, want in expect.items():
        assert float(norm(grads, jnp.int32(step))) == pytest.approx(want, rel=1e-6), step
    plain = RunConfig(name="t", model=None, phases=(PhaseConfig("all", 2, lr=lr),))
    assert trained_grads(plain, grads, jnp.int32(0)) is grads
