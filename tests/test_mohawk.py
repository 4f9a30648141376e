"""MOHAWK on a tiny teacher/student, trained by the shared engine: weight transfer and the original's mixer init, the
three stage losses decrease, the original's per-stage trainable sets (and the earlier mixer-only variants), stages 1-2
are ONE jitted step over all layers with independent per-layer updates, the original's optimizer/schedule and KD form,
the hybrid decode path, and the recipe end to end (gradient accumulation, presets) with exact resume."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import preset
from jaxlm.distill.mohawk import (StageTask, kd_loss, stage_config, student_config, teacher_targets,
                                  trainable_filter, transfer_weights, truncate_teacher)
from jaxlm.errors import ConfigError
from jaxlm.models.decoder import DecoderLM
from jaxlm.models.phi_mamba import Z_BIAS, PhiMambaLM
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


def test_original_mixer_init(pair):
    """transfer_weights' default init is goombalab/mohawk's DiscreteMamba2 init (configs' z: identity, convolution:
    identity, out/in: default): the gate is silu(0 . u + 1.278464542761) = 1 for every input, in_proj is torch's
    U(+-1/sqrt(d_model)), out_proj U(+-1/sqrt(d_inner)) / sqrt(24), D = 1; init="identity-conv" is the earlier one."""
    teacher, student, ids = pair
    mx = student.layers[1].mixer
    d = teacher.cfg.hidden_size
    assert Z_BIAS == 1.278464542761 and abs(float(jax.nn.silu(jnp.float32(Z_BIAS))) - 1.0) < 1e-6
    np.testing.assert_array_equal(mx.z_bias[...], np.full(mx.d_inner, Z_BIAS, np.float32))
    w = np.asarray(mx.in_proj.kernel[...])
    z = w[:, mx.conv_dim:mx.conv_dim + mx.d_inner]
    assert np.abs(z).max() == 0.0  # z rows of the original's in_proj.weight are zero
    rest = np.concatenate([w[:, :mx.conv_dim], w[:, mx.conv_dim + mx.d_inner:]], axis=1)
    bound = 1 / np.sqrt(d)  # kaiming_uniform(a=sqrt(5)): U(-b, b), std b / sqrt(3)
    assert np.abs(rest).max() <= bound and np.abs(rest).max() > 0.95 * bound
    assert rest.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    o = np.asarray(mx.out_proj.kernel[...])
    ob = 1 / np.sqrt(mx.d_inner) / np.sqrt(24)  # rescale_prenorm_residual with the original's n_layer = 24
    assert np.abs(o).max() <= ob * (1 + 1e-6) and o.std() == pytest.approx(ob / np.sqrt(3), rel=0.05)
    np.testing.assert_array_equal(mx.D[...], 1.0)
    assert not np.array_equal(w, np.asarray(student.layers[0].mixer.in_proj.kernel[...]))  # one key per layer
    # the gate is open: the mixer's output is out_proj(y) exactly, whatever the input
    u = jax.random.normal(jax.random.key(3), (2, 5, d))
    g = mx._output(jnp.ones((2, 5, mx.num_heads, mx.head_dim)), mx._project(u)[1][0])
    np.testing.assert_allclose(g, mx.out_proj(jnp.ones((2, 5, mx.d_inner))), rtol=1e-6, atol=1e-7)
    old = PhiMambaLM(student.cfg, rngs=nnx.Rngs(1))
    transfer_weights(teacher, old, init="identity-conv")
    assert float(jnp.abs(old.layers[1].mixer.z_bias[...]).max()) == 0.0
    assert float(old.layers[1].mixer.conv_weight[...][-1].min()) == 1.0
    with pytest.raises(ConfigError, match="init"):
        transfer_weights(teacher, old, init="xavier")


def _trained_paths(task):
    from jaxlm.train.state import abstract_params

    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract_params(task)[1])]


def test_trainable_sets_per_stage(pair):
    """The original's trainable sets (a parameter trains iff its stage's loss reaches it): stage 1 the SSM layers'
    mixer + input norm; stage 2 their whole block (mixer, norms, MLP); stage 3 everything, a hybrid's attention too.
    The earlier variants stay options: stage1_norm=False / stage2="mixer" (mixers only), freeze_attention."""
    teacher, student, _ = pair
    hyb = PhiMambaLM(student_config(teacher.cfg, chunk_size=8, attn_layers=(1,)), rngs=nnx.Rngs(1))
    transfer_weights(teacher, hyb)

    def layers_parts(paths):
        return {(int(p.split("['layers'][")[1].split("]")[0]), p.split("]['")[2].split("'")[0])
                for p in paths if "['layers'][" in p}

    p1 = _trained_paths(StageTask(1, hyb, teacher))
    assert layers_parts(p1) == {(i, k) for i in (0, 2) for k in ("mixer", "attn_norm")}
    assert all("student" in p for p in p1) and not any("embed" in p or "final_norm" in p for p in p1)
    p2 = _trained_paths(StageTask(2, hyb, teacher))
    parts = {k for _, k in layers_parts(p2)}
    assert {i for i, _ in layers_parts(p2)} == {0, 2} and {"mixer", "attn_norm", "mlp"} <= parts
    assert not any("embed" in p or "lm_head" in p or "teacher" in p for p in p2)
    p3 = _trained_paths(StageTask(3, hyb, teacher))
    assert any("['attn']" in p for p in p3) and any("embed" in p for p in p3)  # attention trains by default
    for task in (StageTask(1, hyb, teacher, stage1_norm=False), StageTask(2, hyb, teacher, stage2="mixer")):
        paths = _trained_paths(task)
        assert paths and all("mixer" in p for p in paths) and not any("mlp" in p or "norm" in p for p in paths)
    p3f = _trained_paths(StageTask(3, hyb, teacher, freeze_attention=True, freeze_mlp=True))
    assert not any("['attn']" in p or "['mlp']" in p for p in p3f) and any("attn_norm" in p for p in p3f)
    with pytest.raises(ConfigError, match="stage2"):
        StageTask(2, hyb, teacher, stage2="attention")
    with pytest.raises(ConfigError, match="ssm_layers"):
        trainable_filter(2)


def test_hybrid_decode_matches_full_forward(pair):
    """A hybrid student decodes token by token (SSM state for the Mamba layers, a KV cache for the attention layer)
    with the logits of the full forward; without max_len a hybrid still refuses init_state."""
    teacher, _, ids = pair
    hyb = PhiMambaLM(student_config(teacher.cfg, chunk_size=8, attn_layers=(1,)), rngs=nnx.Rngs(2))
    transfer_weights(teacher, hyb)
    ids = ids[:2, :9]
    full = jax.jit(lambda i: hyb(i))(ids)
    states = hyb.init_state(2, max_len=9)
    step = jax.jit(lambda t, s: hyb.step(t, s))
    got = []
    for i in range(ids.shape[1]):
        lg, states = step(ids[:, i], states)
        got.append(lg)
    np.testing.assert_allclose(np.stack(got, 1), full, atol=2e-4, rtol=1e-4)
    assert np.asarray(states["lengths"]).tolist() == [9, 9]
    with pytest.raises(ConfigError, match="hybrid"):
        hyb.init_state(2)


MESH = None


def _engine(task, stage, steps=12, lr=3e-3):
    """The shared engine's pieces for one stage: (state, rest, jitted step) on one device, constant lr, no weight
    decay (the tests isolate the loss; the original's optimizer is pinned by the schedule test)."""
    global MESH
    MESH = MESH or make_mesh("1x1", devices=jax.devices()[:1])
    cfg = stage_config(stage, steps, lr, seq_len=11, batch=4, optim="jaxlm")
    cfg = dataclasses.replace(cfg, phases=(dataclasses.replace(cfg.phases[0], lr=LRSchedule("constant", lr, lr)),))
    setup = setup_state(task, lambda p: make_optimizer(cfg, p), MESH, 0)
    state, rest = setup.initial()
    return state, rest, make_step(task, setup.mdef, setup.tx, cfg, MESH, setup.shardings, setup.rest_shardings,
                                  donate=False)


def _batch(ids):
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


@pytest.mark.parametrize("stage,opts", [(1, {}), (2, {}), (2, {"stage2": "mixer"})])
def test_layerwise_stage_is_one_jitted_step_and_decreases(pair, stage, opts):
    teacher, student, ids = pair
    task = StageTask(stage, student, teacher, **opts)
    state, rest, step = _engine(task, stage)
    params = state.params["student"]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    if opts:  # the mixer-only variant: only mixer parameters train (the rest, teacher included, is frozen input)
        assert paths and all("mixer" in p for p in paths) and not any("mlp" in p or "norm" in p for p in paths)
    else:  # the original's sets (test_trainable_sets_per_stage); never the embeddings, head or teacher
        assert paths and not any("embed" in p or "lm_head" in p for p in paths)
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
    # Hinton's KD loss is minimised (= teacher entropy * T^2) when the student equals the teacher
    tl = jax.random.normal(jax.random.key(0), (2, 3, 16)) * 3
    assert float(kd_loss(tl, tl, 2.0, "hinton")) < float(kd_loss(tl * 0.5, tl, 2.0, "hinton"))


def test_kd_loss_forms():
    """form="original" is goombalab/mohawk's supervised.py: torch cross_entropy(input=student / T,
    target=softmax(teacher)) -- teacher untempered, no T^2 -- so at T=2 it is minimised by student = 2 * teacher;
    form="hinton" is T^2 CE(softmax(teacher / T), log_softmax(student / T)); both agree at T = 1."""
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 16)) * 2, rng.normal(size=(2, 3, 16)) * 2

    def lsm(x):
        return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)

    p = np.exp(lsm(t))
    want = -(p * lsm(s / 2.0)).sum(-1).mean()  # torch's soft-target cross_entropy, mean over tokens
    assert float(kd_loss(jnp.asarray(s), jnp.asarray(t), 2.0)) == pytest.approx(want, rel=1e-5)
    want_h = -(np.exp(lsm(t / 2)) * lsm(s / 2)).sum(-1).mean() * 4
    assert float(kd_loss(jnp.asarray(s), jnp.asarray(t), 2.0, "hinton")) == pytest.approx(want_h, rel=1e-5)
    assert float(kd_loss(jnp.asarray(s), jnp.asarray(t), 1.0)) == pytest.approx(
        float(kd_loss(jnp.asarray(s), jnp.asarray(t), 1.0, "hinton")), rel=1e-6)
    tj = jnp.asarray(t)
    assert float(kd_loss(2 * tj, tj, 2.0)) < min(float(kd_loss(tj, tj, 2.0)), float(kd_loss(2.2 * tj, tj, 2.0)))
    with pytest.raises(ConfigError, match="kd"):
        kd_loss(tj, tj, 1.0, "kl")


def test_stage_optimizer_is_the_originals():
    """stage_config's default (optim="original") is goombalab/mohawk's configs/Phi/1.5B/base/optimizer.yaml through
    distill/utils.py: AdamW (0.9, 0.95, eps 1e-8), weight decay 0.1 on every trained parameter (one torch parameter
    group: norms and biases too), no clipping, WSD with int(5%) warmup from 0 and linear decay over the last int(10%)
    steps to min_lr 1e-8 -- checked against a port of utils/wsd_scheduler.py's lr_wsd_lambda (LambdaLR: step t's
    lr is lr * lambda(t))."""
    from jaxlm.train.optim import decay_mask, make_schedule

    cfg = stage_config(2, 60, 2e-4, seq_len=64, batch=16, grad_accum=2)
    o = cfg.optim
    assert (o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm) == (0.9, 0.95, 1e-8, 0.1, None)
    assert cfg.train.grad_accum == 2 and cfg.train.global_batch == 16
    mask = decay_mask({"layers": {"0": {"attn_norm": {"scale": jnp.ones(3)}, "mlp": {"up": {"bias": jnp.ones(3)}}}}},
                      o)
    assert all(jax.tree.leaves(mask))  # norms and biases decay too

    def lr_wsd_lambda(step, max_lr, min_lr, warmup_start_lr, warmup_end, standard_end, decay_end):
        if step < warmup_end:
            return (step / warmup_end * (max_lr - warmup_start_lr) + warmup_start_lr) / max_lr
        if step < standard_end:
            return 1
        if step < decay_end:
            return ((decay_end - standard_end - (step - standard_end)) / (decay_end - standard_end)
                    * (max_lr - min_lr) + min_lr) / max_lr
        return min_lr / max_lr

    s = make_schedule(cfg)
    for t in range(60):
        want = 2e-4 * lr_wsd_lambda(t, 2e-4, 1e-8, 0.0, int(0.05 * 60), 60 - int(0.1 * 60), 60)
        assert s(t) == pytest.approx(want, rel=1e-9, abs=1e-15), t
        assert float(jax.jit(s)(jnp.int32(t))) == pytest.approx(want, rel=1e-5, abs=1e-12), t
    assert s(0) == 0.0
    with pytest.raises(ConfigError, match="optim"):
        stage_config(1, 60, 1e-4, seq_len=64, batch=4, optim="sgd")


def test_stage_schedule_is_warmup_stable_decay_without_clipping():
    """stage_config(optim="jaxlm") (the earlier choice): AdamW without global-norm clipping (it would couple the
    layers) on a WSD schedule: 10% warmup from lr/100, stable, 10% linear decay to lr/100, no weight decay."""
    from jaxlm.train.optim import make_schedule

    cfg = stage_config(1, 60, 3e-3, seq_len=64, batch=4, optim="jaxlm")
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


def _recipe_cfg():
    from recipes import mohawk as rm

    args = rm.build_parser().parse_args(
        ["--seq-len", "16", "--batch", "2", "--stage1-tokens", "96", "--stage2-tokens", "96", "--stage3-tokens", "96",
         "--eval-batches", "1", "--save-every", "100", "--distill-layers", "0", "--chunk-size", "8", "--log-every", "1",
         "--lr3", "5e-5", "--batch1", "4", "--micro-batch", "2"])
    return rm.resolve(args)


def test_recipe_presets_and_data():
    """recipes.mohawk's presets and batches (the original's by gradient accumulation) and its data streams."""
    from recipes import mohawk as rm

    # the original presets: batches of 2^15 / 2^15 / 2^19 tokens by accumulation of 8-sequence micro-batches
    orig = rm.resolve(rm.build_parser().parse_args(["--preset", "original"]))
    assert orig["batches"] == [16, 16, 256] and orig["grad_accum"] == [2, 2, 32] and orig["seq_len"] == 2048
    assert orig["steps"] == [2442, 4883, 5265] and [orig[f"lr{i}"] for i in (1, 2, 3)] == [2e-4, 1e-4, 1e-4]
    assert (orig["optim"], orig["init"], orig["stage2"], orig["kd"], orig["freeze_attention"]) == \
        ("original", "original", "block", "original", False)
    hyb = rm.resolve(rm.build_parser().parse_args(["--preset", "original-hybrid"]))
    assert hyb["attn_layers"] == [4, 10, 16, 22] and hyb["stage3_tokens"] == 4_760_000_000

    cfg = _recipe_cfg()
    assert cfg["steps"] == [2, 3, 3] and cfg["grad_accum"] == [2, 1, 1] and cfg["data"] == "pydoc-topics"
    # the default data: one global sequence of seeded random windows over the pydoc topics (stage s continues at
    # the global step where stage s-1 ended), perplexity on consecutive held-out windows
    data = rm.Data(cfg, _ByteTok())
    np.testing.assert_array_equal(data.pipeline(2, 3, 3).batch_at(1)["inputs"],
                                  data.pipeline(3, 3, 0).batch_at(4)["inputs"])
    assert data.pipeline(1, 2, 0).batch_at(0)["inputs"].shape == (4, 16)
    assert data.eval[0]["inputs"].shape == (2, 16) and len(data.eval) == 1
    packed = rm.Data(dict(cfg, data="embedded-language"), _ByteTok())  # the jaxlm.data packed source, an option
    assert packed.eval[0]["inputs"].shape == (2, 16) and not packed.windows


@pytest.mark.slow  # ~40 s: three recipe runs; the stage steps are covered by the layerwise/stage-3 tests above and
# exact resume inside a phase by tests/test_engine_task.py and tests/test_train_resume.py
def test_recipe_runs_and_resumes_exactly(tmp_path):
    """recipes.mohawk end to end on a tiny teacher (stage 1 with 2 micro-batches per step); interrupted inside
    stage 2, the resumed run reproduces the uninterrupted one (curves and perplexities)."""
    from recipes import mohawk as rm

    cfg = _recipe_cfg()
    teacher = DecoderLM(preset("smollm2-tiny", init_std=0.1), rngs=nnx.Rngs(0))
    quiet = lambda *a: None
    full = rm.run(cfg, tmp_path / "a", False, quiet, teacher_tok=(teacher, _ByteTok()))
    p = full["ppl"]
    assert p["student_stage3"] < p["student_init"], p
    assert [len(full["curves"][s]) for s in "123"] == [2, 3, 3]
    rm.run(cfg, tmp_path / "b", False, quiet, teacher_tok=(teacher, _ByteTok()), stop_at=4)  # inside stage 2
    resumed = rm.run(cfg, tmp_path / "b", True, quiet, teacher_tok=(teacher, _ByteTok()))
    for k in ("student_stage2", "student_stage3"):
        np.testing.assert_allclose(resumed["ppl"][k], p[k], rtol=1e-5)
    np.testing.assert_allclose([r[1] for r in resumed["curves"]["3"]], [r[1] for r in full["curves"]["3"]], rtol=1e-5)
    assert (tmp_path / "b" / "report.md").exists()
