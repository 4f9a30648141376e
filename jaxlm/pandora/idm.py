"""An inverse-dynamics classifier (IDM): which action class turned the state `before` into the clip `after`?

It measures action following: a world model follows an action when the IDM, trained on the simulator's real clips,
recognises that action in the model's clip. A small NNX conv net reads the frames of the state and the clip (and
the difference of their last frames) stacked on channels; it trains through the shared engine
(`jaxlm.train.train` with `IDMTask` on an `ArrayPipeline` of real transitions from TRAIN_SEEDS).

    from jaxlm.pandora.idm import train_idm
    idm = train_idm(world, "runs/idm", steps=300)
    idm.accuracy(heldout)        # on held-out transitions
    idm.predict(before, after)   # uint8 (B, Tb, H, W, 3), (B, Ta, H, W, 3) -> int class ids (B,)

`train_idm(..., shuffle_labels=True)` is the control: the same data with the labels permuted across examples, so
nothing links clip and label and held-out accuracy must fall to chance (`chance_accuracy`: the most frequent class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.errors import ConfigError
from jaxlm.nn.conv import Conv
from jaxlm.nn.linear import Linear
from jaxlm.pandora.world import Transition, World, check_frames, draw_train_seeds
from jaxlm.train.task import Task

FRAMES = ("batch", None, None, None, None)


def _to_float(x):
    return x.astype(jnp.float32) / 127.5 - 1.0 if jnp.issubdtype(x.dtype, jnp.integer) else x.astype(jnp.float32)


class IDMNet(nnx.Module):
    """conv 3x3 (width) -> conv 3x3 stride 2 (2 width) -> conv 3x3 stride 2 (2 width), ReLU, mean and max pooled,
    -> 128 -> n_classes. Input: the Tb + Ta frames and (after[-1] - before[-1]) on channels."""

    def __init__(self, n_frames: int, n_classes: int, width: int = 32, *, rngs: nnx.Rngs):
        c_in = 3 * (n_frames + 1)
        self.c1 = Conv(c_in, width, (3, 3), rngs=rngs)
        self.c2 = Conv(width, 2 * width, (3, 3), strides=2, rngs=rngs)
        self.c3 = Conv(2 * width, 2 * width, (3, 3), strides=2, rngs=rngs)
        self.fc = Linear(4 * width, 128, ("embed", "mlp"), bias=True, std=(4 * width) ** -0.5, rngs=rngs)
        self.out = Linear(128, n_classes, ("mlp", None), bias=True, std=128 ** -0.5, rngs=rngs)

    def __call__(self, before, after):
        b, a = _to_float(before), _to_float(after)
        frames = jnp.concatenate([b, a, (a[:, -1:] - b[:, -1:])], axis=1)  # [B, T + 1, H, W, 3]
        B, T, H, W, C = frames.shape
        x = frames.transpose(0, 2, 3, 1, 4).reshape(B, H, W, T * C)
        x = jax.nn.relu(self.c1(x))
        x = jax.nn.relu(self.c2(x))
        x = jax.nn.relu(self.c3(x))
        x = jnp.concatenate([x.mean((1, 2)), x.max((1, 2))], axis=-1)
        return self.out(jax.nn.relu(self.fc(x)))


class IDMTask(Task):
    """Cross entropy of the action class (examples with class < 0 are ignored); metrics: correct, count."""

    name = "pandora-idm"
    batch_spec = {"before": FRAMES, "after": FRAMES, "action_class": ("batch",)}

    def __init__(self, n_frames: int, n_classes: int, width: int = 32):
        self.n_frames, self.n_classes, self.width = int(n_frames), int(n_classes), int(width)

    @property
    def step_key(self):
        return ("pandora-idm", self.n_frames, self.n_classes, self.width)

    def build(self, rngs):
        return IDMNet(self.n_frames, self.n_classes, self.width, rngs=rngs)

    def _terms(self, model, batch):
        logits = model(batch["before"], batch["after"])
        y = batch["action_class"]
        ok = y >= 0
        safe = jnp.where(ok, y, 0)
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, safe[:, None], -1)[:, 0]
        correct = (jnp.argmax(logits, -1) == y) & ok
        return jnp.where(ok, nll, 0.0).sum(), ok.sum().astype(jnp.float32), correct.sum().astype(jnp.float32)

    def loss(self, model, batch, rng):
        tot, n, correct = self._terms(model, batch)
        return tot, n, {"correct": correct, "count": n}

    def eval_loss(self, model, batch):
        tot, n, _ = self._terms(model, batch)
        return tot, n

    def step_metrics(self, sums, weight):
        return {"acc": sums["correct"] / jnp.maximum(sums["count"], 1.0)}

    def log_metrics(self, m):
        return {"train_acc": float(m["acc"])}

    def compat(self, run_cfg):
        return {**super().compat(run_cfg), "model": {"idm": [self.n_frames, self.n_classes, self.width]}}


def stack(transitions: Sequence[Transition]) -> dict:
    """Transitions -> {"before", "after": uint8 arrays, "action_class": int32}."""
    return {"before": np.stack([t.before for t in transitions]), "after": np.stack([t.after for t in transitions]),
            "action_class": np.asarray([t.action_id for t in transitions], np.int32)}


def chance_accuracy(labels) -> float:
    """The accuracy of always answering the most frequent class (labels < 0 ignored)."""
    y = np.asarray(labels)
    y = y[y >= 0]
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


class IDM:
    """A trained IDMNet with a jitted batch predictor."""

    def __init__(self, model: IDMNet, world_settings: dict, frame_size: int, n_classes: int):
        self.model, self.settings, self.frame_size, self.n_classes = model, dict(world_settings), frame_size, n_classes
        graphdef, state = nnx.split(model)
        self._fn = jax.jit(lambda st, b, a: jnp.argmax(nnx.merge(graphdef, st)(b, a), -1))
        self._state = state

    def predict(self, before, after, batch: int = 256) -> np.ndarray:
        """uint8 before (B, Tb, H, W, 3) and after (B, Ta, H, W, 3) -> predicted class ids (B,) int."""
        b = check_frames(before, self.frame_size, "IDM.predict before")
        a = check_frames(after, self.frame_size, "IDM.predict after")
        if b.ndim != 5 or a.ndim != 5 or len(a) != len(b):
            raise ConfigError(f"IDM.predict: expected batched clips, got before {b.shape} and after {a.shape}")
        out = [np.asarray(self._fn(self._state, b[i:i + batch], a[i:i + batch])) for i in range(0, len(b), batch)]
        return np.concatenate(out) if out else np.zeros((0,), np.int64)

    def accuracy(self, transitions: Sequence[Transition]) -> float:
        d = stack(transitions)
        ok = d["action_class"] >= 0
        return float((self.predict(d["before"], d["after"]) == d["action_class"])[ok].mean())


def train_transitions(world: World, n: int, *, n_rounds: int = 4, seed: int = 0) -> list[Transition]:
    """`n` real transitions from `n / n_rounds` episodes of training seeds drawn with `default_rng([seed, 99])`."""
    seeds = draw_train_seeds(np.random.default_rng([int(seed), 99]), -(-int(n) // n_rounds))
    return world.transitions(seeds, n_rounds)[:n]


def train_idm(world: World, out_dir, *, n_train: int = 4096, n_rounds: int = 4, steps: int = 300, batch: int = 64,
              lr: float = 2e-3, width: int = 32, seed: int = 0, shuffle_labels: bool = False,
              data: dict | None = None, progress: bool = False, mesh=None) -> IDM:
    """Train an IDM on real clips of `world` (or on `data`, a `stack(...)` dict) through the engine; with
    `shuffle_labels` the labels are permuted across examples (the chance-level control)."""
    from jaxlm.sharding import make_mesh
    from jaxlm.train import ArrayPipeline, LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig, train

    d = dict(data) if data is not None else stack(train_transitions(world, n_train, n_rounds=n_rounds, seed=seed))
    if shuffle_labels:
        d["action_class"] = np.random.default_rng([int(seed), 5]).permutation(d["action_class"])
    n = len(d["action_class"])
    B = min(int(batch), n)
    task = IDMTask(world.context_frames + world.clip_len, world.n_classes, width)
    run = RunConfig(name="pandora-idm", model=None, optim=OptimConfig(weight_decay=0.0, clip_norm=1.0),
                    train=TrainConfig(global_batch=B, seed=seed, data_seed=seed, log_every=50, eval_batches=0,
                                      ckpt_every=steps, keep_latest=1, async_ckpt=False),
                    phases=(PhaseConfig("main", steps, lr=LRSchedule("cosine", lr, lr * 0.05,
                                                                      warmup=max(1, steps // 10))),))
    mesh = mesh if mesh is not None else make_mesh("1x1", devices=jax.devices()[:1])
    res = train(run, ArrayPipeline(d, B, seed=seed), mesh, Path(out_dir), task=task, progress=progress,
                print_fn=(print if progress else (lambda *a: None)), plot=False)
    model = task.build(nnx.Rngs(0))
    g, params, rest = nnx.split(model, nnx.Param, ...)
    trained = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), jax.device_get(res.state.params))
    nnx.replace_by_pure_dict(params, trained)
    return IDM(nnx.merge(g, params, rest), world.settings(), world.frame_size, world.n_classes)


__all__ = ["IDMNet", "IDMTask", "IDM", "train_idm", "train_transitions", "stack", "chance_accuracy"]
