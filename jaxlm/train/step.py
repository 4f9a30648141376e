"""One pure, jitted train step `(state, batch, rest) -> (state, metrics)` for any Task, with explicit shardings.

The objective is sum(loss_sum) / sum(weight) over the global batch, from the Task's
`loss(model, batch, rng) -> (loss_sum, weight, metrics)`. The RNG key of step s is the state's key folded with s
(and with the micro-batch index under accumulation), so every step gets fresh noise and a resumed run the same.
With `grad_accum = A` the batch is split into A strided micro-batches whose summed losses, weights, metrics and
gradients are accumulated before the single optimizer update, so the result equals the big-batch step.
Batch shardings come from the logical rules table (`jaxlm.sharding.logical_to_spec`) and the Task's `batch_spec`.
Metrics: loss, grad norm (before clipping), learning rate, whether loss and gradients are finite, and the Task's
`step_metrics` (for the LM task: tokens and the loss per data source).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.sharding import logical_to_spec, shard, use_mesh
from jaxlm.train.optim import make_schedule, trained_grads
from jaxlm.train.task import LMTask, flops_per_token  # noqa: F401  (flops_per_token: old import path)

LM_BATCH_SPEC = LMTask.batch_spec
BATCH_KEYS = tuple(LM_BATCH_SPEC)


def batch_shardings(mesh, spec=None) -> dict:
    """{key: NamedSharding} from a Task's batch spec {key: logical axes} (default: the LM token batch)."""
    spec = LM_BATCH_SPEC if spec is None else spec
    return {k: NamedSharding(mesh, logical_to_spec(names, None, mesh)) for k, names in spec.items()}


def step_rng(rng_data, step):
    """The key of one step: the run's key (raw uint32 data) folded with the step number."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)


_JIT_CACHE: dict = {}


def _tree_key(tree):
    return jax.tree.structure(tree), tuple(jax.tree.leaves(tree))


def _cached(key, build):
    """One jitted function per key, so a resumed run, the next stage or the next run of a sweep in the same process
    reuses the compiled program. Tasks opt in with a hashable `step_key` (all their loss depends on besides the
    model structure, the batch and the run config); without one every call builds (and compiles) afresh."""
    if key is None:
        return build()
    try:
        hash(key)
    except TypeError:
        return build()
    if key not in _JIT_CACHE:
        _JIT_CACHE[key] = build()
    return _JIT_CACHE[key]


def make_step(task, mdef, tx, run_cfg, mesh, state_shardings, rest_shardings=None, *, donate: bool = True):
    """The jitted `(state, batch, rest) -> (state, metrics)` of `task` (rest: the frozen non-trained variables)."""
    rest_shardings = {} if rest_shardings is None else rest_shardings
    tk = getattr(task, "step_key", None)
    key = None if tk is None else ("step", tk, mdef.graphdef, repr(run_cfg), mesh, tuple(task.batch_spec.items()),
                                   _tree_key(state_shardings), _tree_key(rest_shardings), donate)
    return _cached(key, lambda: _make_step(task, mdef, tx, run_cfg, mesh, state_shardings, rest_shardings, donate))


def _make_step(task, mdef, tx, run_cfg, mesh, state_shardings, rest_shardings, donate):
    grad_accum = run_cfg.train.grad_accum
    schedule = make_schedule(run_cfg)
    spec = dict(task.batch_spec)
    b_sh = batch_shardings(mesh, spec)
    rep = NamedSharding(mesh, P())

    def grads_of(params, rest, batch, key):
        def f(p):
            tot, w, m = task.loss(mdef.merge(p, rest), batch, key)
            return tot, (w, m)

        (tot, (w, m)), g = jax.value_and_grad(f, has_aux=True)(params)
        return tot, (w, m), g

    def step_fn(state, batch, rest):
        batch = {k: batch[k] for k in spec}
        key = step_rng(state.rng, state.step)
        with use_mesh(mesh):
            if grad_accum == 1:
                tot, (w, msum), grads = grads_of(state.params, rest, batch, key)
            else:
                # strided micro-batches: micro-batch i holds rows i, i+A, i+2A, ... so every device works on each
                def split(x):
                    x = x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:])
                    return jnp.moveaxis(x, 1, 0)

                micro = {k: split(v) for k, v in batch.items()}

                def body(carry, xs):
                    i, mb = xs
                    mb = {k: shard(v, spec[k]) for k, v in mb.items()}
                    out = grads_of(state.params, rest, mb, jax.random.fold_in(key, i))
                    return jax.tree.map(jnp.add, carry, out), None

                first = {k: v[0] for k, v in micro.items()}
                shapes = jax.eval_shape(lambda: grads_of(state.params, rest, first, key))
                zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
                (tot, (w, msum), grads), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
            denom = jnp.maximum(jnp.asarray(w, jnp.float32), 1e-12)  # a batch with no weight: loss and grads 0
            grads = jax.tree.map(lambda g: g / denom, grads)
            loss = tot / denom
            gnorm = optax.tree.norm(trained_grads(run_cfg, grads, state.step))  # frozen leaves excluded
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": gnorm, "lr": schedule(state.step),
                   "finite": jnp.isfinite(loss) & jnp.isfinite(gnorm), **task.step_metrics(msum, w)}
        new = type(state)(params=params, opt_state=opt_state, step=state.step + 1, rng=state.rng)
        return new, metrics

    return jax.jit(step_fn, in_shardings=(state_shardings, b_sh, rest_shardings),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,) if donate else ())


def make_train_step(mdef, tx, run_cfg, num_sources: int, mesh, state_shardings, *, donate: bool = True):
    """LM shorthand (tests, benchmarks): the next-token step over `num_sources` sources, `(state, batch) -> ...`."""
    task = LMTask(mdef.cfg, [str(i) for i in range(num_sources)])
    fn = make_step(task, mdef, tx, run_cfg, mesh, state_shardings, donate=donate)
    return lambda state, batch: fn(state, batch, {})


def make_eval_step(task, mdef, mesh, param_shardings, rest_shardings=None):
    """(params, rest, batch) -> (summed eval loss, weight), jitted on the mesh (Task.eval_loss)."""
    rest_shardings = {} if rest_shardings is None else rest_shardings
    keys = tuple(getattr(task, "eval_keys", None) or task.batch_spec)
    tk = getattr(task, "step_key", None)
    key = None if tk is None else ("eval", tk, mdef.graphdef, mesh, keys, tuple(task.batch_spec.items()),
                                   _tree_key(param_shardings), _tree_key(rest_shardings))
    return _cached(key, lambda: _make_eval_step(task, mdef, mesh, param_shardings, rest_shardings, keys))


def _make_eval_step(task, mdef, mesh, param_shardings, rest_shardings, keys):
    b_sh = {k: v for k, v in batch_shardings(mesh, task.batch_spec).items() if k in keys}
    rep = NamedSharding(mesh, P())

    def eval_fn(params, rest, batch):
        with use_mesh(mesh):
            tot, w = task.eval_loss(mdef.merge(params, rest), {k: batch[k] for k in keys})
        return tot, jnp.asarray(w, jnp.float32)

    return jax.jit(eval_fn, in_shardings=(param_shardings, rest_shardings, b_sh), out_shardings=(rep, rep))


def to_device_batch(batch: dict, mesh, spec=None, *, global_rows: bool = False) -> dict:
    """Host numpy batch -> global sharded jax arrays for the keys of `spec` (a Task's batch_spec; default the LM
    token batch). The batch holds this process's rows (as the training pipeline yields them), or with
    `global_rows=True` all rows (each process then contributes its slice)."""
    spec = LM_BATCH_SPEC if spec is None else spec
    sh = batch_shardings(mesh, spec)
    out = {}
    pc, pi = jax.process_count(), jax.process_index()
    for k in spec:
        if k not in batch:
            continue
        x = batch[k]
        if global_rows and pc > 1:
            n = x.shape[0] // pc
            x = x[pi * n:(pi + 1) * n]
        if pc > 1:
            out[k] = jax.make_array_from_process_local_data(sh[k], x)
        else:
            out[k] = jax.device_put(x, sh[k])
    return out
