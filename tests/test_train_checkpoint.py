"""Checkpoints: LLM360-style retention, restore onto another mesh, incompatible resume, HF export."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import preset
from jaxlm.errors import ConfigError
from jaxlm.sharding import make_mesh
from jaxlm.train.checkpoint import Checkpointer, export_hf, release_steps, retained_steps
from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig
from jaxlm.train.loop import train
from jaxlm.train.state import abstract_params
from jaxlm.train.synthetic import SyntheticPipeline

MODEL = preset("crystalcoder-tiny", dtype="float32")
SRC = ["code", "language"]


def _cfg(steps=8, model=MODEL, **train_kw):
    t = dict(seq_len=32, global_batch=16, log_every=100, eval_batches=0, ckpt_every=2, keep_latest=2,
             keep_release=2)
    t.update(train_kw)
    return RunConfig(name="ck", model=model, optim=OptimConfig(mup_width_scale=0.0625), train=TrainConfig(**t),
                     phases=(PhaseConfig("p", steps, {"code": 0.5, "language": 0.5},
                                         lr=LRSchedule("linear", 3e-3, 3e-4, warmup=1)),))


def _pipe(cfg):
    return SyntheticPipeline(cfg.model.vocab_size, cfg.train.seq_len, cfg.train.global_batch,
                             weights_by_phase=[p.weights for p in cfg.phases])


def _quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """8 uninterrupted steps on an 8x1 mesh, checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("full")
    cfg = _cfg()
    res = train(cfg, _pipe(cfg), make_mesh("8x1"), out, sources=SRC, progress=False, print_fn=_quiet, plot=False)
    return cfg, out, res


def test_release_and_retention_rules():
    assert release_steps(100, 4) == [25, 50, 75, 100]
    assert release_steps(274_320, 360)[:2] == [762, 1524] and len(release_steps(274_320, 360)) == 360
    assert release_steps(10, 0) == []
    saved = list(range(1, 13))
    assert retained_steps(saved, 2, release_steps(12, 3)) == [4, 8, 11, 12]
    assert retained_steps(saved, 1, []) == [12]


def test_manager_keeps_latest_plus_release_steps(full_run):
    cfg, out, _ = full_run
    ck = Checkpointer(out / "checkpoints", save_every=0)
    kept = ck.steps()
    ck.close()
    # saved at 2, 4, 6, 8; release = [4, 8]; latest 2 = [6, 8]
    assert kept == retained_steps([2, 4, 6, 8], 2, release_steps(8, 2)) == [4, 6, 8]


def test_mesh_variants_and_restore_onto_another_mesh(full_run, tmp_path):
    """Steps 0-3 on a 4x2 mesh, then resume from its checkpoint on 2x2x2: the loss trajectory matches the
    uninterrupted 8x1 run within float tolerance (8x1, 4x2 and 2x2x2 all agree)."""
    _, out, full = full_run
    cfg = _cfg(ckpt_every=4)  # the same run; the one checkpoint it needs is step 4's (fewer saves than full_run's)
    part = tmp_path / "part"
    first = train(cfg, _pipe(cfg), make_mesh("4x2"), part, sources=SRC, stop_at=4, progress=False,
                  print_fn=_quiet, plot=False)
    mesh = make_mesh("2x2x2")
    res = train(cfg, _pipe(cfg), mesh, part, sources=SRC, resume=True, progress=False, print_fn=_quiet, plot=False)
    assert sorted(first.losses) == [0, 1, 2, 3] and sorted(res.losses) == [4, 5, 6, 7]
    got = [first.losses[s] for s in range(4)] + [res.losses[s] for s in range(4, 8)]
    want = [full.losses[s] for s in range(8)]
    assert want[-1] < want[0]
    np.testing.assert_allclose(got, want, rtol=2e-5)
    # the restored state lives on the new mesh's shardings; Adam moments follow their parameter
    q = res.state.params["layers"]["attn"]["q"]["kernel"]  # [layers, embed, heads]
    assert q.sharding.mesh.shape == mesh.shape and tuple(q.sharding.spec) == (None, "fsdp", "tensor")
    assert res.state.opt_state[1].mu["layers"]["attn"]["q"]["kernel"].sharding == q.sharding
    assert int(res.state.step) == 8


def test_incompatible_resume_is_refused(full_run, tmp_path):
    cfg, out, _ = full_run
    bad = _cfg(model=MODEL.replace(hidden_size=32, head_dim=8))
    with pytest.raises(ConfigError, match=r"model\.hidden_size: checkpoint has 64, this run has 32"):
        train(bad, _pipe(bad), make_mesh("8x1"), out, sources=SRC, resume=True, progress=False, print_fn=_quiet)
    bad = _cfg(seq_len=16)
    with pytest.raises(ConfigError, match=r"data\.seq_len: checkpoint has 32, this run has 16"):
        train(bad, _pipe(bad), make_mesh("8x1"), out, sources=SRC, resume=True, progress=False, print_fn=_quiet)
    # and a new run never overwrites an existing one
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(cfg, _pipe(cfg), make_mesh("8x1"), out, sources=SRC, progress=False, print_fn=_quiet)


def test_export_checkpoint_to_hf(full_run, tmp_path):
    from jaxlm.io import load_pretrained

    cfg, out, _ = full_run
    hf = export_hf(out, tmp_path / "hf", step=6)
    assert (hf / "config.json").exists()
    model, hcfg = load_pretrained(hf)
    ck = Checkpointer(out / "checkpoints", save_every=0)
    mdef, abstract = abstract_params(cfg.model)
    params = ck.restore_params(6, abstract)
    ck.close()
    ids = jnp.asarray(np.arange(24, dtype=np.int32).reshape(2, 12) % cfg.model.vocab_size)
    want = mdef.merge(params)(ids)
    got = model(ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_execution_only_keys_do_not_block_a_resume():
    from jaxlm.train.checkpoint import check_compatible

    saved = {"model": {"hidden_size": 64, "remat": False}, "data": {"seq_len": 32}}  # an older record: no impl key
    check_compatible(saved, {"model": {"hidden_size": 64, "attention_impl": "chunked", "remat": True},
                             "data": {"seq_len": 32}}, "ckpt")
    with pytest.raises(ConfigError, match=r"model\.hidden_size: checkpoint has 64, this run has 32"):
        check_compatible(saved, {"model": {"hidden_size": 32, "attention_impl": "chunked"}, "data": {"seq_len": 32}},
                         "ckpt")
