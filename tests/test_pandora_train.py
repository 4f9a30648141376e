"""Pandora's staged training on the shared engine: which parts each stage trains (fast, shapes only), and the
stage runs themselves — frozen parts bit-unchanged, the LLM outside the trained state, exact resume (slow)."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import pandora_preset
from jaxlm.pandora.model import WorldModel
from jaxlm.pandora.task import STAGES, TRAINED, PandoraTask, stage_phase
from jaxlm.train import ArrayPipeline, LRSchedule, OptimConfig, RunConfig, TrainConfig

CFG = pandora_preset("pandora-test")
LR = LRSchedule("constant", 1e-3, 1e-3)


def run_config(stage, steps):
    return RunConfig(name=stage, model=None, optim=OptimConfig(weight_decay=0.0),
                     train=TrainConfig(global_batch=4, seed=0, data_seed=0, log_every=1, eval_batches=0,
                                       ckpt_every=2, async_ckpt=False),
                     phases=(stage_phase(stage, steps, LR),))


def flat(tree) -> dict:
    from jaxlm.train.optim import path_str

    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_each_stage_trains_only_its_parts():
    from jaxlm.train.optim import phase_masks

    abstract = nnx.eval_shape(lambda: WorldModel(CFG, rngs=nnx.Rngs(0)))
    _, params, rest = nnx.split(abstract, TRAINED, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    assert set(rest) == {"llm"} and "llm" not in params  # the LLM is never in the trained state
    want = {"dynamics": {"video", "bow"}, "align": {"vit", "projector", "queries", "adapter"},
            "instruct": {"vit", "projector", "queries", "adapter", "video"}}
    for stage in STAGES:
        mask = flat(phase_masks(run_config(stage, 1), params)[0])
        trained = {p.split("/")[0] for p, on in mask.items() if on}
        frozen = {p.split("/")[0] for p, on in mask.items() if not on}
        assert trained == want[stage], stage
        assert not trained & frozen, stage


def data(n=8, seed=0):
    rs = np.random.RandomState(seed)
    return {"before": rs.uniform(-1, 1, (n, 2, 16, 16, 3)).astype(np.float32),
            "after": rs.uniform(-1, 1, (n, 2, 16, 16, 3)).astype(np.float32),
            "action_ids": rs.randint(1, 255, (n, 32)).astype(np.int32),
            "action_mask": (np.arange(32)[None] < rs.randint(3, 20, (n, 1))).astype(np.int32)}


def train_stage(stage, steps, out, init=None, stop_at=None, resume=False, calibration=None):
    from jaxlm.sharding import make_mesh
    from jaxlm.train import train

    mesh = make_mesh("1x1", devices=jax.devices()[:1])
    return train(run_config(stage, steps), ArrayPipeline(data(), 4, seed=0), mesh, out,
                 task=PandoraTask(CFG, stage, init, calibration), resume=resume, stop_at=stop_at, progress=False,
                 plot=False,
                 print_fn=lambda *a: None)


def same(a: dict, b: dict, prefixes) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a if k.split("/")[0] in prefixes)


def changed(a: dict, b: dict, prefix) -> bool:
    return any(not np.array_equal(a[k], b[k]) for k in a if k.split("/")[0] == prefix)


@pytest.mark.slow
def test_stages_freeze_their_parts_and_resume_exactly(tmp_path):
    from jaxlm.pandora.model import build_world_model

    init = build_world_model(CFG, 0)  # the engine's fresh init (same seed, same jitted construction)
    _, p0, r0 = nnx.split(init, TRAINED, ...)
    p0, llm0 = flat(nnx.to_pure_dict(p0)), flat(nnx.to_pure_dict(r0))

    a = train_stage("dynamics", 4, tmp_path / "a")
    pa = flat(a.state.params)
    assert same(pa, p0, {"vit", "projector", "queries", "adapter"}) and changed(pa, p0, "video")
    assert same(flat(a.rest), llm0, {"llm"})
    # exact resume: 2 steps, stop, resume to 4 == 4 uninterrupted steps (parameters and optimizer state)
    train_stage("dynamics", 4, tmp_path / "a2", stop_at=2)
    a2 = train_stage("dynamics", 4, tmp_path / "a2", resume=True)
    assert same(flat(a2.state.params), pa, set(k.split("/")[0] for k in pa))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a2.state.opt_state),
                                                     jax.tree.leaves(a.state.opt_state)))

    b = train_stage("align", 2, tmp_path / "b", init=tmp_path / "a", calibration=data(8, 1))  # from (a)'s ckpt
    pb = flat(b.state.params)
    assert same(pb, pa, {"video", "bow"}) and changed(pb, pa, "adapter") and changed(pb, pa, "queries")
    assert same(flat(b.rest), llm0, {"llm"})

    c = train_stage("instruct", 4, tmp_path / "c", init=tmp_path / "b")
    pc = flat(c.state.params)
    assert same(pc, pb, {"bow"}) and changed(pc, pb, "video") and changed(pc, pb, "adapter")
    train_stage("instruct", 4, tmp_path / "c2", init=tmp_path / "b", stop_at=2)
    c2 = train_stage("instruct", 4, tmp_path / "c2", init=tmp_path / "b", resume=True)
    assert same(flat(c2.state.params), pc, set(k.split("/")[0] for k in pc))


def test_align_normalizer_is_floored_for_identical_rows():
    """A batch whose rows share one action (or a micro-batch of one) has target variance 0: the floor keeps the
    normalised alignment loss O(1), not x1e8; a varied batch is still divided by its variance."""
    import jax.numpy as jnp

    from jaxlm.pandora.task import align_normalizer

    row = jax.random.normal(jax.random.key(0), (1, 4, 8))
    for same_rows in (row, jnp.tile(row, (4, 1, 1))):
        n = float(align_normalizer(same_rows))
        assert np.isclose(n, 1e-3 * float(jnp.mean(row ** 2)), rtol=1e-4), n
    varied = jax.random.normal(jax.random.key(1), (8, 4, 8))
    var = float(jnp.mean((varied - varied.mean(0)) ** 2))
    assert np.isclose(float(align_normalizer(varied)), var, rtol=1e-5)


def test_recipe_defaults_and_a_bad_high_t_fraction():
    import recipes.pandora as R
    from jaxlm.errors import ConfigError
    from jaxlm.pandora.world import make_world

    world = make_world("sprites")
    args = R.build_parser().parse_args([])
    assert args.steps == "800,200,300" and R.make_config(args, world).high_t_fraction == 0.5
    assert args.align_warmup == 0.5
    with pytest.raises(ConfigError, match=r"--align-warmup 1.0: expected a share in \[0, 1\)"):
        R.make_config(R.build_parser().parse_args(["--align-warmup", "1.0"]), world)
    with pytest.raises(ConfigError, match=r"--high-t-fraction 1.5: expected a share in \[0, 1\]"):
        R.make_config(R.build_parser().parse_args(["--high-t-fraction", "1.5"]), world)


def test_align_stage_sets_the_adapter_input_norm_from_its_calibration_batch():
    """Stage (b) given a calibration batch starts with the adapter's input standardization set from the LLM's
    query states on it (shift = their per-feature mean); other stages, or adapter_input_norm=False, leave the
    identity."""
    import jax.numpy as jnp

    from jaxlm.pandora.model import _query_states_fn

    def fresh(cfg=CFG):
        abstract = nnx.eval_shape(lambda: WorldModel(cfg, rngs=nnx.Rngs(0)))
        g, st = nnx.split(abstract)
        rng = np.random.default_rng(0)
        nnx.replace_by_pure_dict(st, jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape).astype(x.dtype)),
                                                  nnx.to_pure_dict(st)))
        m = nnx.merge(g, st)
        m.adapter.in_shift[...] = jnp.zeros_like(m.adapter.in_shift[...])
        m.adapter.in_scale[...] = jnp.ones_like(m.adapter.in_scale[...])
        return m

    calib = data(8, seed=3)
    m = PandoraTask(CFG, "align", fresh(), calibration=calib).pretrained()
    g, st = nnx.split(m)
    qs = np.asarray(_query_states_fn(g, st, jnp.asarray(calib["before"]), jnp.asarray(calib["action_ids"]),
                                     jnp.asarray(calib["action_mask"])))
    np.testing.assert_allclose(np.asarray(m.adapter.in_shift[...]), qs.reshape(-1, qs.shape[-1]).mean(0), atol=1e-5)
    assert not np.allclose(np.asarray(m.adapter.in_scale[...]), 1.0)
    off = CFG.replace(adapter_input_norm=False)
    for task in (PandoraTask(CFG, "instruct", fresh(), calibration=calib),
                 PandoraTask(off, "align", fresh(off), calibration=calib)):
        a = task.pretrained().adapter
        assert np.all(np.asarray(a.in_shift[...]) == 0) and np.all(np.asarray(a.in_scale[...]) == 1)


def test_align_stage_warms_up_the_adapter_alone_first():
    """stage_phases("align", 200, lr, 0.5): 100 steps of the adapter alone, then 100 of every stage-(b) part (the
    phase masks say so); other stages and a zero share are one phase; a share outside [0, 1) is a ConfigError."""
    from jaxlm.errors import ConfigError
    from jaxlm.pandora.task import stage_phases
    from jaxlm.train.optim import phase_masks

    phases = stage_phases("align", 200, LR, 0.5)
    assert [(p.name, p.steps) for p in phases] == [("align-adapter", 100), ("align", 100)]
    abstract = nnx.eval_shape(lambda: WorldModel(CFG, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.split(abstract, TRAINED, ...)[1])
    rc = RunConfig(name="b", model=None, optim=OptimConfig(weight_decay=0.0),
                   train=TrainConfig(global_batch=4, seed=0, data_seed=0), phases=phases)
    masks = phase_masks(rc, params)
    tops = [{p.split("/")[0] for p, on in flat(m).items() if on} for m in masks]
    assert tops == [{"adapter"}, {"vit", "projector", "queries", "adapter"}]
    assert len(stage_phases("instruct", 200, LR, 0.5)) == 1 and len(stage_phases("align", 200, LR, 0.0)) == 1
    with pytest.raises(ConfigError, match="adapter_warmup=1.5"):
        stage_phases("align", 200, LR, 1.5)


def test_checkpoint_config_diffs_treat_unrecorded_fields_as_defaults():
    """A checkpoint written before a PandoraConfig field existed loads when this config keeps that field's default,
    and not when it changes it; a recorded field that differs is named."""
    from jaxlm.pandora.task import config_diffs
    from jaxlm.train.config import to_dict

    mine = to_dict(CFG)
    old = {k: v for k, v in mine.items() if k != "adapter_input_norm"}
    assert config_diffs(old, mine) == []
    assert config_diffs(old, to_dict(CFG.replace(adapter_input_norm=not CFG.adapter_input_norm))) == \
        ["adapter_input_norm"]
    assert config_diffs({**mine, "clip_len": 7}, mine) == ["clip_len"]
