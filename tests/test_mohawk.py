"""MOHAWK on a tiny teacher/student, trained by the shared engine: weight transfer, the three stage losses decrease,
stages 1-2 are ONE jitted step over all layers with independent per-layer updates, the stage schedule, and the recipe
end to end with exact resume."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import preset
from jaxlm.distill.mohawk import (StageTask, kd_loss, stage_config, student_config, teacher_targets,
                                  transfer_weights, truncate_teacher)
from jaxlm.errors import ConfigError
from jaxlm.models.decoder import DecoderLM
from jaxlm.models.phi_mamba import PhiMambaLM
from jaxlm.sharding import make_mesh
from jaxlm.train.config import LRSchedule
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import setup_state
from jaxlm.train.step import make_step


@pytest.fixture(scope="module")
def pair():
    tcfg = preset("phi-tiny", num_layers=3, init_std=0.1)
    teacher = DecoderLM(tcfg, rngs=nnx.Rngs(0))
    student = PhiMambaLM(student_config(tcfg, chunk_size=8), rngs=nnx.Rngs(1))
    transfer_weights(teacher, student)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, tcfg.vocab_size, size=(4, 12)), jnp.int32)
    return teacher, student, ids


def test_weight_transfer_and_targets(pair):
    teacher, student, ids = pair
    assert student.cfg.d_state == teacher.cfg.head_dim and student.cfg.heads == teacher.cfg.num_heads
    np.testing.assert_array_equal(student.embed[...], teacher.embed[...])
    np.testing.assert_array_equal(student.layers[2].mlp.up.kernel[...], teacher.layers.mlp.up.kernel[...][2])
    np.testing.assert_array_equal(student.layers[1].attn_norm.bias[...], teacher.layers.attn_norm.bias[...][1])
    conv = student.layers[0].mixer.conv_weight[...]
    assert float(conv[-1].min()) == 1.0 and float(jnp.abs(conv[:-1]).max()) == 0.0  # identity conv init
    ins, probs, outs = jax.jit(lambda i: teacher_targets(teacher, i))(ids)
    hidden = jax.jit(lambda i: teacher(i, return_hidden=True)[2])(ids)
    np.testing.assert_allclose(ins, hidden, atol=1e-5)  # per-layer inputs agree with DecoderLM's own
    assert probs.shape == (3, 4, 4, 12, 12) and outs.shape == (3, 4, 12, 64)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    small = truncate_teacher(teacher, 2)
    assert small.cfg.num_layers == 2
    np.testing.assert_allclose(jax.jit(lambda i: teacher_targets(small, i)[0])(ids), ins[:2], atol=1e-6)
    with pytest.raises(ConfigError, match="teacher_layers"):
        truncate_teacher(teacher, 7)


MESH = None


def _engine(task, stage, steps=12, lr=3e-3):
    """The shared engine's pieces for one stage: (state, rest, jitted step) on one device, constant lr."""
    global MESH
    MESH = MESH or make_mesh("1x1", devices=jax.devices()[:1])
    cfg = stage_config(stage, steps, lr, seq_len=11, batch=4)
    cfg = dataclasses.replace(cfg, phases=(dataclasses.replace(cfg.phases[0], lr=LRSchedule("constant", lr, lr)),))
    setup = setup_state(task, lambda p: make_optimizer(cfg, p), MESH, 0)
    state, rest = setup.initial()
    return state, rest, make_step(task, setup.mdef, setup.tx, cfg, MESH, setup.shardings, setup.rest_shardings,
                                  donate=False)


def _batch(ids):
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


@pytest.mark.parametrize("stage", [1, 2])
def test_layerwise_stage_is_one_jitted_step_and_decreases(pair, stage):
    teacher, student, ids = pair
    task = StageTask(stage, student, teacher)
    state, rest, step = _engine(task, stage)
    params = state.params["student"]
    # only mixer parameters train in stages 1-2 (the rest, teacher included, is frozen input of the step)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert paths and all("mixer" in p for p in paths) and not any("mlp" in p or "norm" in p for p in paths)
    before = jax.tree.map(lambda v: np.array(v), params)
    losses = []
    for i in range(12):
        state, m = step(state, _batch(ids), rest)
        losses.append(np.asarray(m["layer_loss"]))
        assert losses[-1].shape == (3,)  # one loss per layer, all from the same call
    assert task.traces == 1  # every layer, every step: one compiled function
    losses = np.stack(losses)
    assert (losses[-1] < 0.9 * losses[0]).all(), losses[[0, -1]]
    for l in range(3):  # every layer's mixer moved
        moved = np.abs(np.asarray(state.params["student"]["layers"][l]["mixer"]["in_proj"]["kernel"])
                       - before["layers"][l]["mixer"]["in_proj"]["kernel"]).max()
        assert moved > 0, l


def test_layer_updates_are_independent(pair):
    """Layer 0's update does not depend on layer 2's parameters (the layers are trained as separate problems)."""
    teacher, student, ids = pair
    state, rest, step = _engine(StageTask(2, student, teacher), 2, lr=1e-2)
    p_b = jax.tree.map(jnp.array, state.params)
    # A RANDOM perturbation (fixed seed), not a constant: layer 2's in_proj sees a LayerNorm-ed input (zero mean
    # over features), which cancels a constant added to every kernel entry exactly, so layer 2 would only change by
    # float rounding. Noise of std 0.5 (kernel init std 0.1, float32 eps 1e-7) changes layer 2's output by O(1).
    kernel = p_b["student"]["layers"][2]["mixer"]["in_proj"]["kernel"]
    p_b["student"]["layers"][2]["mixer"]["in_proj"]["kernel"] = \
        kernel + 0.5 * jax.random.normal(jax.random.key(7), kernel.shape)
    new_a, ma = step(state, _batch(ids), rest)
    new_b, mb = step(dataclasses.replace(state, params=p_b), _batch(ids), rest)
    la, lb = np.asarray(ma["layer_loss"]), np.asarray(mb["layer_loss"])
    # the perturbation really reaches layer 2 (by far more than rounding: relative change > 5%) ...
    assert abs(lb[2] - la[2]) > 0.05 * abs(la[2]), (la, lb)
    # ... and not layers 0-1: their losses and updates are bit-identical (same compiled program, same inputs; any
    # coupling, e.g. layer 0 reading layer 2's output or a global-norm clip in tx, would change them by >> 1 ulp)
    np.testing.assert_array_equal(la[:2], lb[:2])
    for i in (0, 1):
        np.testing.assert_array_equal(new_a.params["student"]["layers"][i]["mixer"]["in_proj"]["kernel"],
                                      new_b.params["student"]["layers"][i]["mixer"]["in_proj"]["kernel"])


def test_stage3_kd_decreases_and_freeze_mlp(pair):
    teacher, student, ids = pair
    task = StageTask(3, student, teacher, temperature=2.0, freeze_mlp=True)
    state, rest, step = _engine(task, 3, lr=2e-3)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.params)]
    assert not any("mlp" in p for p in paths) and any("embed" in p for p in paths)
    assert not any("teacher" in p for p in paths)
    kds = []
    for _ in range(8):
        state, m = step(state, _batch(ids), rest)
        kds.append(float(m["kd"]))
    assert kds[-1] < kds[0], kds
    nnx.update(task.pretrained(), nnx.State(state.params))  # the trained weights go back into the student
    np.testing.assert_array_equal(student.embed[...], state.params["student"]["embed"])
    # KD loss is minimised (= teacher entropy * T^2) when the student equals the teacher
    tl = jax.random.normal(jax.random.key(0), (2, 3, 16)) * 3
    assert float(kd_loss(tl, tl, 2.0)) < float(kd_loss(tl * 0.5, tl, 2.0))


def test_stage_schedule_is_warmup_stable_decay_without_clipping():
    """stage_config: AdamW without global-norm clipping (it would couple the layers) on MOHAWK's WSD schedule:
    10% warmup from lr/100, stable, 10% linear decay to lr/100 (the formula of the original optax schedule)."""
    from jaxlm.train.optim import make_schedule

    cfg = stage_config(1, 60, 3e-3, seq_len=64, batch=4)
    assert cfg.optim.clip_norm is None and cfg.optim.weight_decay == 0.0
    s = make_schedule(cfg)
    lr, w, d = 3e-3, 6, 6
    for t in range(60):
        want = (lr * 0.01 + (lr - lr * 0.01) * t / w if t < w else lr if t < 60 - d
                else lr + (lr * 0.01 - lr) * (t - (60 - d)) / d)
        assert float(jax.jit(s)(jnp.int32(t))) == pytest.approx(want, rel=1e-5), t
        assert s(t) == pytest.approx(want, rel=1e-9), t


class _ByteTok:
    eos_id = 0
    vocab_size = 256

    def encode(self, text, add_bos=False):
        return [1 + b % 255 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 1 for i in ids if i).decode("utf-8", "replace")


def test_recipe_runs_and_resumes_exactly(tmp_path):
    """recipes.mohawk end to end on a tiny teacher; interrupted inside stage 2, the resumed
    run reproduces the uninterrupted one (curves and perplexities)."""
    from recipes import mohawk as rm

    teacher = DecoderLM(preset("smollm2-tiny", init_std=0.1), rngs=nnx.Rngs(0))
    args = rm.build_parser().parse_args(
        ["--seq-len", "16", "--batch", "2", "--stage1-tokens", "96", "--stage2-tokens", "96", "--stage3-tokens", "96",
         "--eval-batches", "1", "--save-every", "100", "--distill-layers", "0", "--chunk-size", "8", "--log-every", "1",
         "--lr3", "1e-3"])
    cfg = rm.resolve(args)
    assert cfg["steps"] == [3, 3, 3] and cfg["data"] == "pydoc-topics"
    # the default data: one global sequence of seeded random windows over the pydoc topics (stage s continues at
    # the global step where stage s-1 ended), perplexity on consecutive held-out windows
    data = rm.Data(cfg, _ByteTok())
    np.testing.assert_array_equal(data.pipeline(2, 3, 3).batch_at(1)["inputs"],
                                  data.pipeline(1, 3, 0).batch_at(4)["inputs"])
    assert data.eval[0]["inputs"].shape == (2, 16) and len(data.eval) == 1
    packed = rm.Data(dict(cfg, data="embedded-language"), _ByteTok())  # the jaxlm.data packed source, an option
    assert packed.eval[0]["inputs"].shape == (2, 16) and not packed.windows
    quiet = lambda *a: None
    full = rm.run(cfg, tmp_path / "a", False, quiet, teacher_tok=(teacher, _ByteTok()))
    p = full["ppl"]
    assert p["student_stage3"] < p["student_init"], p
    assert all(len(full["curves"][s]) == 3 for s in "123")
    rm.run(cfg, tmp_path / "b", False, quiet, teacher_tok=(teacher, _ByteTok()), stop_at=5)  # inside stage 2
    resumed = rm.run(cfg, tmp_path / "b", True, quiet, teacher_tok=(teacher, _ByteTok()))
    for k in ("student_stage2", "student_stage3"):
        np.testing.assert_allclose(resumed["ppl"][k], p[k], rtol=1e-5)
    np.testing.assert_allclose([r[1] for r in resumed["curves"]["3"]], [r[1] for r in full["curves"]["3"]], rtol=1e-5)
    assert (tmp_path / "b" / "report.md").exists()
