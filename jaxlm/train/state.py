"""The train state: one pytree of parameters (float32 master weights), optimizer state, step and RNG key.

Parameters are kept as the model's pure nested dict (`nnx.to_pure_dict(nnx.State)`), so optax, orbax and the
sharding helpers all see plain dicts of arrays; the jitted step rebuilds the module with `nnx.merge`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.config import DecoderConfig
from jaxlm.models.decoder import DecoderLM
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
    """What is static about the model: config, graphdef and the nnx.State of the non-parameter variables."""

    cfg: DecoderConfig
    graphdef: Any
    rest: Any

    def merge(self, params):
        return nnx.merge(self.graphdef, nnx.State(params), self.rest)


def abstract_model(cfg: DecoderConfig, seed: int = 0):
    """(ModelDef, abstract params pure-dict, params sharding metadata State) without allocating weights."""
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return ModelDef(cfg, graphdef, rest), params


def abstract_params(cfg: DecoderConfig, seed: int = 0):
    """(ModelDef, pure dict of ShapeDtypeStructs of the parameters)."""
    mdef, st = abstract_model(cfg, seed)
    return mdef, jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(st))


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
    abstract_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(params_state))
    p_sh = param_shardings(params_state, mesh)
    rep = NamedSharding(mesh, P())
    return TrainState(params=p_sh, opt_state=opt_state_shardings(tx, abstract_params, p_sh, mesh), step=rep, rng=rep)


@dataclass
class Setup:
    """Everything about a run's state except its values: model definition, optimizer, shardings, abstract state."""

    mdef: ModelDef
    tx: Any
    shardings: TrainState
    abstract: TrainState  # ShapeDtypeStructs carrying the shardings (restore target)
    seed: int

    def create(self) -> TrainState:
        """Fresh weights (created directly sharded by one jitted init) and optimizer state."""
        cfg, tx, seed = self.mdef.cfg, self.tx, self.seed

        def create():
            model = DecoderLM(cfg, rngs=nnx.Rngs(seed))
            params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
            return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                              rng=jax.random.key_data(jax.random.key(seed)))

        return jax.jit(create, out_shardings=self.shardings)()


def setup_state(model_cfg: DecoderConfig, tx_factory, mesh, seed: int) -> Setup:
    """Shapes, shardings and optimizer for a run, without allocating or compiling anything."""
    mdef, params_state = abstract_model(model_cfg, seed)
    pure_abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(params_state))
    tx = tx_factory(pure_abstract)
    shardings = state_shardings_for(tx, params_state, mesh)
    like = TrainState(params=pure_abstract, opt_state=jax.eval_shape(tx.init, pure_abstract),
                      step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    return Setup(mdef, tx, shardings, abstract_state(shardings, like), seed)


def init_state(model_cfg: DecoderConfig, tx_factory, mesh, seed: int):
    """(ModelDef, a fresh TrainState sharded on `mesh`, its shardings, the optimizer)."""
    s = setup_state(model_cfg, tx_factory, mesh, seed)
    return s.mdef, s.create(), s.shardings, s.tx


def abstract_state(shardings: TrainState, like: TrainState) -> TrainState:
    """ShapeDtypeStructs shaped like `like` carrying `shardings` (the target of a sharded restore)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)


def param_count(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


__all__ = ["TrainState", "ModelDef", "Setup", "setup_state", "init_state", "abstract_model", "abstract_params",
           "state_shardings_for", "abstract_state", "param_count"]
