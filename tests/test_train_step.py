"""The jitted train step: grad accumulation == big batch, mesh variants agree, mesh errors, NaN guard."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxlm.config import preset
from jaxlm.errors import MeshError
from jaxlm.sharding import make_mesh
from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig
from jaxlm.train.loop import NonFiniteLossError, train
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import init_state
from jaxlm.train.step import make_train_step, to_device_batch
from jaxlm.train.synthetic import SyntheticPipeline

MODEL = preset("crystalcoder-tiny", dtype="float32")


def _cfg(steps=4, phases=None, **train):
    t = dict(seq_len=32, global_batch=16, log_every=100, eval_batches=0, ckpt_every=0, async_ckpt=False)
    t.update(train)
    return RunConfig(name="t", model=MODEL, optim=OptimConfig(mup_width_scale=0.0625),
                     train=TrainConfig(**t),
                     phases=phases or (PhaseConfig("p", steps, {"code": 0.5, "language": 0.5},
                                                   lr=LRSchedule("linear", 3e-3, 3e-4, warmup=1)),))


def _pipe(cfg):
    return SyntheticPipeline(MODEL.vocab_size, cfg.train.seq_len, cfg.train.global_batch,
                             weights_by_phase=[p.weights for p in cfg.phases], phase_steps=[p.steps for p in cfg.phases])


def test_grad_accumulation_equals_big_batch():
    mesh = make_mesh("8x1")
    out = {}
    # eps=1 makes Adam's first update ~linear in the gradient, so parameters compare meaningfully
    base = dataclasses.replace(_cfg(), optim=OptimConfig(eps=1.0, mup_width_scale=0.0625))
    mdef, state, sh, tx = init_state(base.model, lambda p: make_optimizer(base, p), mesh, 0)
    for accum in (1, 4):
        cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, grad_accum=accum))
        step = make_train_step(mdef, tx, cfg, 2, mesh, sh, donate=False)
        batch = to_device_batch(_pipe(cfg).batch_at(0), mesh)
        new, m = step(state, batch)
        out[accum] = (jax.device_get(m), jax.device_get(new.params))
    (m1, p1), (m4, p4) = out[1], out[4]
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
    assert float(m4["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-5)
    np.testing.assert_allclose(m4["source_loss"], m1["source_loss"], rtol=1e-6)
    assert m4["tokens"] == m1["tokens"] == 16 * 32
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bad_meshes_raise_mesh_error(tmp_path):
    with pytest.raises(MeshError, match="needs 3 devices but 8"):
        make_mesh("3x1")
    cfg = _cfg()
    with pytest.raises(MeshError, match="tensor=8 does not divide num_heads=4"):
        train(cfg, _pipe(cfg), make_mesh("1x8"), tmp_path / "a", sources=["code", "language"], progress=False)
    cfg = _cfg(global_batch=12)
    with pytest.raises(MeshError, match="batch size 12 is not divisible by data\\*fsdp=8"):
        train(cfg, _pipe(cfg), make_mesh("8x1"), tmp_path / "b", sources=["code", "language"], progress=False)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # a sane first phase, then a learning rate of 1e30: the loss of step 5 is NaN
    phases = (PhaseConfig("ok", 4, {"code": 1.0}, lr=LRSchedule("constant", 1e-3, 1e-3)),
              PhaseConfig("boom", 4, {"code": 1.0}, lr=LRSchedule("constant", 1e30, 1e30)))
    cfg = _cfg(phases=phases, ckpt_every=2)
    with pytest.raises(NonFiniteLossError, match=r"at step 5 \(phase boom\).*last good checkpoint is step 4") as e:
        train(cfg, _pipe(cfg), make_mesh("8x1"), tmp_path, sources=["code", "language"], progress=False,
              print_fn=lambda *a: None)
    assert "nonfinite_batch_step5.npz" in str(e.value)
    saved = np.load(tmp_path / "nonfinite_batch_step5.npz")
    np.testing.assert_array_equal(saved["inputs"], _pipe(cfg).batch_at(5)["inputs"])
    from jaxlm.train.checkpoint import Checkpointer
    from jaxlm.train.state import abstract_params

    ck = Checkpointer(tmp_path / "checkpoints", save_every=0)
    assert ck.steps() == [2, 4]
    params = ck.restore_params(4, abstract_params(MODEL)[1])
    ck.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [0, 1, 2, 3, 4]
