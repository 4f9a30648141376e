"""The engine with a non-LM Task: a tiny MLP regression (in-memory arrays through ArrayPipeline, a fresh RNG key per
step for input noise) trains, checkpoints, resumes bit-identically and restores onto another mesh through the same
loop; phases freeze parameters while keeping their optimizer state, and resume exactly inside a phase."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.errors import ConfigError
from jaxlm.nn.linear import Linear
from jaxlm.sharding import make_mesh
from jaxlm.train import ArrayPipeline, LRSchedule, OptimConfig, PhaseConfig, RunConfig, Task, TrainConfig, train


class MLP(nnx.Module):
    def __init__(self, d_in, d_hidden, d_out, rngs):
        self.hidden = Linear(d_in, d_hidden, ("embed", "mlp"), bias=True, std=0.3, rngs=rngs)
        self.out = Linear(d_hidden, d_out, ("mlp", "embed"), bias=True, std=0.3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


class Regression(Task):
    """Mean squared error of y ~ MLP(x + noise); the noise comes from the step's RNG key."""

    name = "mlp-regression"
    batch_spec = {"x": ("batch", None), "y": ("batch", None)}
    step_key = "mlp-regression"  # runs in this process share compiled steps

    def build(self, rngs):
        return MLP(8, 32, 4, rngs)

    def loss(self, model, batch, rng):
        x = batch["x"] + 0.01 * jax.random.normal(rng, batch["x"].shape)
        err = (model(x) - batch["y"]) ** 2
        return err.sum(), jnp.float32(err.size), {"abs_err": jnp.abs(model(batch["x"]) - batch["y"]).sum()}

    def eval_loss(self, model, batch):
        err = (model(batch["x"]) - batch["y"]) ** 2
        return err.sum(), jnp.float32(err.size)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(8, 4))).astype(np.float32)
    return {"x": x, "y": y}


DATA = _data()


def _cfg(phases):
    return RunConfig(name="toy", model=None, optim=OptimConfig(weight_decay=0.0, clip_norm=None),
                     train=TrainConfig(global_batch=16, log_every=100, eval_batches=0, ckpt_every=2, keep_latest=3,
                                       async_ckpt=False),
                     phases=phases)


def _run(cfg, out, mesh="8x1", **kw):
    return train(cfg, ArrayPipeline(DATA, 16, seed=1), make_mesh(mesh), out, task=Regression(), progress=False,
                 print_fn=lambda *a: None, plot=False, **kw)


def _leaves(params):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}


def test_toy_task_trains_resumes_bit_identically_and_restores_onto_another_mesh(tmp_path):
    cfg = _cfg((PhaseConfig("main", 8, lr=LRSchedule("cosine", 3e-2, 3e-3, warmup=1)),))
    held = {"held": [{k: v[:16] for k, v in DATA.items()}]}
    full = _run(cfg, tmp_path / "full", eval_batches=held)
    assert sorted(full.losses) == list(range(8)) and full.losses[7] < 0.7 * full.losses[0]
    assert full.summary["task"] == "mlp-regression" and full.summary["final_eval"]["eval/held/loss"] > 0
    first = _run(cfg, tmp_path / "part", stop_at=4, eval_batches=held)
    shutil.copytree(tmp_path / "part", tmp_path / "moved")
    rest = _run(cfg, tmp_path / "part", resume=True, eval_batches=held)
    # interrupted + resumed == uninterrupted, bit for bit (params, losses, the RNG noise of every step)
    assert [first.losses[s] for s in range(4)] + [rest.losses[s] for s in range(4, 8)] == \
        [full.losses[s] for s in range(8)]
    for k, v in _leaves(full.state.params).items():
        np.testing.assert_array_equal(_leaves(rest.state.params)[k], v, err_msg=k)
    # the same checkpoint restored onto a 4x2 mesh continues the run (float tolerance across meshes)
    mesh = make_mesh("4x2")
    moved = _run(cfg, tmp_path / "moved", mesh="4x2", resume=True)
    np.testing.assert_allclose([moved.losses[s] for s in range(4, 8)], [full.losses[s] for s in range(4, 8)],
                               rtol=1e-5)
    k = moved.state.params["hidden"]["kernel"]
    assert k.sharding.mesh.shape == mesh.shape and tuple(k.sharding.spec) == ("fsdp", "tensor")


def _adam(opt_state):
    """The ScaleByAdamState inside the engine's (frozen-phase wrapped) optimizer state."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
    assert len(found) == 1
    return found[0]


def test_phases_freeze_parameters_keep_their_moments_and_resume_inside_a_phase(tmp_path):
    lr = LRSchedule("constant", 1e-2, 1e-2)
    cfg = _cfg((PhaseConfig("all", 2, lr=lr), PhaseConfig("hidden-only", 3, lr=lr, frozen=("^out/",)),
                PhaseConfig("head-only", 2, lr=lr, trainable=("^out/",))))
    full = _run(cfg, tmp_path / "full")
    p1 = _run(cfg, tmp_path / "b", stop_at=2)            # end of phase 1
    p2a = _run(cfg, tmp_path / "b", resume=True, stop_at=3)  # inside phase 2
    p2 = _run(cfg, tmp_path / "b", resume=True, stop_at=5)   # end of phase 2
    end = _run(cfg, tmp_path / "b", resume=True)
    # exact resume inside (and across) phases
    for k, v in _leaves(full.state.params).items():
        np.testing.assert_array_equal(_leaves(end.state.params)[k], v, err_msg=k)
    a1, a2 = _adam(p1.state.opt_state), _adam(p2.state.opt_state)
    for name in ("kernel", "bias"):
        # frozen in phase 2: parameter and Adam moments bit-unchanged since the end of phase 1
        np.testing.assert_array_equal(p2.state.params["out"][name], p1.state.params["out"][name])
        np.testing.assert_array_equal(a2.mu["out"][name], a1.mu["out"][name])
        np.testing.assert_array_equal(a2.nu["out"][name], a1.nu["out"][name])
        # trained in phase 2: moved, and its moments too
        assert np.abs(np.asarray(p2.state.params["hidden"][name]) - p1.state.params["hidden"][name]).max() > 0
        assert np.abs(np.asarray(a2.mu["hidden"][name]) - a1.mu["hidden"][name]).max() > 0
        # phase 3 trains only the head: the hidden layer stays as phase 2 left it, the head moves again
        np.testing.assert_array_equal(end.state.params["hidden"][name], p2.state.params["hidden"][name])
        assert np.abs(np.asarray(end.state.params["out"][name]) - p2.state.params["out"][name]).max() > 0
    assert int(p2a.state.step) == 3
    bad = _cfg((PhaseConfig("x", 2, lr=lr, trainable=("^nope/",)),))
    with pytest.raises(ConfigError, match=r"phases.0.trainable: pattern '\^nope/' matches no parameter"):
        _run(bad, tmp_path / "bad")
