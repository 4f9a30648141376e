"""The train state: one pytree of parameters (float32 master weights), optimizer state, step and RNG key.

Parameters are kept as the model's pure nested dict (`nnx.to_pure_dict(nnx.State)`), so optax, orbax and the
sharding helpers all see plain dicts of arrays; the jitted step rebuilds the module with `nnx.merge`. The model
comes from a Task (`jaxlm.train.task`): its `param_filter` selects the trained parameters; the other variables
(the "rest", e.g. a distillation teacher) are frozen arrays passed into the jitted step, never checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.sharding import state_shardings


@jax.tree_util.register_dataclass
@dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: number of updates applied
    rng: jax.Array   # uint32 [2] raw key data (folded with the step for any per-step randomness)


@dataclass
class ModelDef:
    """What is static about the model: its graphdef, the Task that built it and the Task's model config (if any)."""

    graphdef: Any
    cfg: Any = None
    task: Any = None

    def merge(self, params, rest=None):
        """The module from trained params (pure dict) and the frozen rest (pure dict; {} when there is none)."""
        return nnx.merge(self.graphdef, nnx.State(params), nnx.State(rest or {}))


def as_task(task_or_cfg):
    """A Task as is; a DecoderConfig becomes the next-token `LMTask` (the LM recipes' objective)."""
    if hasattr(task_or_cfg, "loss") and hasattr(task_or_cfg, "build"):
        return task_or_cfg
    from jaxlm.train.task import LMTask

    return LMTask(task_or_cfg)


def _struct(tree):
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), tree)


def abstract_model(task, seed: int = 0):
    """(ModelDef, params nnx.State, rest nnx.State), abstract (no weights allocated). `rest` is everything the
    Task's `param_filter` does not select (frozen input of the step, e.g. a teacher)."""
    task = as_task(task)
    model = nnx.eval_shape(lambda: task.build(nnx.Rngs(seed)))
    graphdef, params, rest = nnx.split(model, getattr(task, "param_filter", nnx.Param), ...)
    return ModelDef(graphdef, getattr(task, "cfg", None), task), params, rest


def abstract_params(task, seed: int = 0):
    """(ModelDef, pure dict of ShapeDtypeStructs of the parameters); `task` may be a DecoderConfig."""
    mdef, st, _ = abstract_model(task, seed)
    return mdef, _struct(nnx.to_pure_dict(st))


def param_shardings(params_state, mesh):
    return nnx.to_pure_dict(state_shardings(params_state, mesh))


def opt_state_shardings(tx, abstract_params, p_shardings, mesh):
    """Optimizer leaves shaped like the parameters follow their sharding; scalars (counts) are replicated."""
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    pstruct = jax.tree.structure(abstract_params)
    rep = NamedSharding(mesh, P())

    def is_params_like(x):
        try:
            return jax.tree.structure(x) == pstruct
        except Exception:
            return False

    def one(x):
        if is_params_like(x):
            return p_shardings
        return jax.tree.map(lambda _: rep, x)

    return jax.tree.map(one, abstract_opt, is_leaf=is_params_like)


def state_shardings_for(tx, params_state, mesh) -> TrainState:
    abstract_params = _struct(nnx.to_pure_dict(params_state))
    p_sh = param_shardings(params_state, mesh)
    rep = NamedSharding(mesh, P())
    return TrainState(params=p_sh, opt_state=opt_state_shardings(tx, abstract_params, p_sh, mesh), step=rep, rng=rep)


@dataclass
class Setup:
    """Everything about a run's state except its values: model definition, optimizer, shardings, abstract state.
    `rest_shardings` place the frozen rest (see `abstract_model`), which is rebuilt by the Task, never saved."""

    mdef: ModelDef
    tx: Any
    shardings: TrainState
    abstract: TrainState  # ShapeDtypeStructs carrying the shardings (restore target)
    seed: int
    rest_shardings: Any = None

    @property
    def task(self):
        return self.mdef.task

    def _split(self, model):
        g, params, rest = nnx.split(model, getattr(self.task, "param_filter", nnx.Param), ...)
        return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    def create(self) -> TrainState:
        """Fresh state: the Task's `pretrained()` weights if it has them, else a new init (created directly sharded
        by one jitted function); a new optimizer state, step 0, the seed's RNG key."""
        return self.initial()[0]

    def initial(self):
        """(fresh TrainState, frozen rest) -- see `create`."""
        task, tx, seed = self.task, self.tx, self.seed
        pre = task.pretrained() if hasattr(task, "pretrained") else None
        if pre is not None:
            params, rest = self._split(pre)
            params = jax.device_put(params, self.shardings.params)
            rest = jax.device_put(rest, self.rest_shardings)

            def fresh(p):
                return TrainState(params=p, opt_state=tx.init(p), step=jnp.zeros((), jnp.int32),
                                  rng=jax.random.key_data(jax.random.key(seed)))

            return jax.jit(fresh, out_shardings=self.shardings)(params), rest

        def create():
            params, rest = self._split(task.build(nnx.Rngs(seed)))
            return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                              rng=jax.random.key_data(jax.random.key(seed))), rest

        return jax.jit(create, out_shardings=(self.shardings, self.rest_shardings))()

    def rest(self):
        """The frozen rest alone (a resumed run): from `pretrained()`, else a fresh init of the model."""
        pre = self.task.pretrained() if hasattr(self.task, "pretrained") else None
        if pre is not None:
            return jax.device_put(self._split(pre)[1], self.rest_shardings)
        if not jax.tree.leaves(self.rest_shardings):
            return {}
        seed = self.seed
        return jax.jit(lambda: self._split(self.task.build(nnx.Rngs(seed)))[1], out_shardings=self.rest_shardings)()


def setup_state(task, tx_factory, mesh, seed: int) -> Setup:
    """Shapes, shardings and optimizer for a run, without allocating or compiling anything. `task` is a Task (or a
    DecoderConfig, meaning the LM task); `tx_factory(abstract params) -> optax transformation`."""
    mdef, params_state, rest_state = abstract_model(task, seed)
    pure_abstract = _struct(nnx.to_pure_dict(params_state))
    tx = tx_factory(pure_abstract)
    shardings = state_shardings_for(tx, params_state, mesh)
    like = TrainState(params=pure_abstract, opt_state=jax.eval_shape(tx.init, pure_abstract),
                      step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    rest_sh = nnx.to_pure_dict(state_shardings(rest_state, mesh))
    return Setup(mdef, tx, shardings, abstract_state(shardings, like), seed, rest_sh)


def init_state(task, tx_factory, mesh, seed: int):
    """(ModelDef, a fresh TrainState sharded on `mesh`, its shardings, the optimizer)."""
    s = setup_state(task, tx_factory, mesh, seed)
    return s.mdef, s.create(), s.shardings, s.tx


def abstract_state(shardings: TrainState, like: TrainState) -> TrainState:
    """ShapeDtypeStructs shaped like `like` carrying `shardings` (the target of a sharded restore)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)


def param_count(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


__all__ = ["TrainState", "ModelDef", "Setup", "as_task", "setup_state", "init_state", "abstract_model", "abstract_params",
           "state_shardings_for", "abstract_state", "param_count"]
