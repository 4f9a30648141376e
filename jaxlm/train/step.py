"""One pure, jitted train step `(state, batch) -> (state, metrics)` with explicit shardings on a mesh.

The loss is the mean next-token cross entropy over all target tokens of the global batch (targets < 0 are
ignored). With `grad_accum = A` the batch is split into A strided micro-batches whose summed losses and
gradients are accumulated before the single optimizer update, so the result equals the big-batch step.
Metrics: loss, loss per source (via `source_id`), grad norm (before clipping), learning rate, and whether the
loss and gradients are finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.config import DecoderConfig
from jaxlm.sharding import shard, use_mesh
from jaxlm.train.optim import make_schedule

BATCH_KEYS = ("inputs", "targets", "source_id")


def batch_shardings(mesh) -> dict:
    rows = ("data", "fsdp")
    return {"inputs": NamedSharding(mesh, P(rows, None)), "targets": NamedSharding(mesh, P(rows, None)),
            "source_id": NamedSharding(mesh, P(rows))}


def token_losses(mdef, params, inputs, targets):
    """Per-token negative log-likelihood [B, T] (0 where target < 0) and the mask."""
    logits = mdef.merge(params)(inputs)  # [B, T, V] float32
    mask = targets >= 0
    safe = jnp.where(mask, targets, 0)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return jnp.where(mask, lse - picked, 0.0), mask


def loss_sums(mdef, params, batch, num_sources: int):
    """(sum of token losses, (token count, per-source loss sums [S], per-source token counts [S]))."""
    nll, mask = token_losses(mdef, params, batch["inputs"], batch["targets"])
    per_seq = nll.sum(-1)
    per_cnt = mask.sum(-1).astype(jnp.float32)
    onehot = jax.nn.one_hot(batch["source_id"], num_sources, dtype=jnp.float32)  # [B, S]
    return nll.sum(), (mask.sum().astype(jnp.float32), per_seq @ onehot, per_cnt @ onehot)


def make_train_step(mdef, tx, run_cfg, num_sources: int, mesh, state_shardings, *, donate: bool = True):
    grad_accum = run_cfg.train.grad_accum
    schedule = make_schedule(run_cfg)
    b_sh = batch_shardings(mesh)
    rep = NamedSharding(mesh, P())

    def grads_of(params, batch):
        (tot, aux), g = jax.value_and_grad(lambda p: loss_sums(mdef, p, batch, num_sources), has_aux=True)(params)
        return tot, aux, g

    def step_fn(state, batch):
        batch = {k: batch[k] for k in BATCH_KEYS}
        with use_mesh(mesh):
            if grad_accum == 1:
                tot, (cnt, src_sum, src_cnt), grads = grads_of(state.params, batch)
            else:
                # strided micro-batches: micro-batch i holds rows i, i+A, i+2A, ... so every device works on each
                def split(x):
                    x = x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:])
                    return jnp.moveaxis(x, 1, 0)

                micro = {k: split(v) for k, v in batch.items()}

                def body(carry, mb):
                    mb = {"inputs": shard(mb["inputs"], ("batch", "length")),
                          "targets": shard(mb["targets"], ("batch", "length")),
                          "source_id": shard(mb["source_id"], ("batch",))}
                    t, aux, g = grads_of(state.params, mb)
                    acc = jax.tree.map(jnp.add, carry, (t, aux, g))
                    return acc, None

                zeros = (jnp.float32(0), (jnp.float32(0), jnp.zeros(num_sources), jnp.zeros(num_sources)),
                         jax.tree.map(jnp.zeros_like, state.params))
                (tot, (cnt, src_sum, src_cnt), grads), _ = jax.lax.scan(body, zeros, micro)
            denom = jnp.maximum(cnt, 1.0)
            grads = jax.tree.map(lambda g: g / denom, grads)
            loss = tot / denom
            gnorm = optax.tree.norm(grads)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": gnorm,
            "lr": schedule(state.step),
            "tokens": cnt,
            "source_loss": src_sum / jnp.maximum(src_cnt, 1.0),
            "source_tokens": src_cnt,
            "finite": jnp.isfinite(loss) & jnp.isfinite(gnorm),
        }
        new = type(state)(params=params, opt_state=opt_state, step=state.step + 1, rng=state.rng)
        return new, metrics

    metric_sh = {"loss": rep, "grad_norm": rep, "lr": rep, "tokens": rep, "source_loss": rep,
                 "source_tokens": rep, "finite": rep}
    return jax.jit(step_fn, in_shardings=(state_shardings, b_sh), out_shardings=(state_shardings, metric_sh),
                   donate_argnums=(0,) if donate else ())


def make_eval_step(mdef, mesh, param_shardings):
    """(params, {inputs, targets}) -> (sum of token losses, token count), jitted on the mesh."""
    b_sh = batch_shardings(mesh)
    rep = NamedSharding(mesh, P())

    def eval_fn(params, batch):
        with use_mesh(mesh):
            nll, mask = token_losses(mdef, params, batch["inputs"], batch["targets"])
        return nll.sum(), mask.sum().astype(jnp.float32)

    in_b = {"inputs": b_sh["inputs"], "targets": b_sh["targets"]}
    return jax.jit(eval_fn, in_shardings=(param_shardings, in_b), out_shardings=(rep, rep))


def flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs per token (MaxText convention: matmuls x 6, causal attention halved, no embedding gather)."""
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    qd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = d * qd + 2 * d * kd + qd * d + (3 if cfg.mlp == "swiglu" else 2) * d * f
    matmul = L * per_layer + d * cfg.vocab_size
    attn = L * 2 * seq_len * qd  # QK^T and PV: 2 * 2 * T * qd per token forward, halved for causal
    return 6.0 * matmul + 3.0 * attn


def to_device_batch(batch: dict, mesh, *, global_rows: bool = False) -> dict:
    """Host numpy batch -> global sharded jax arrays. The batch holds this process's rows (as the training
    pipeline yields them), or with `global_rows=True` all rows (each process then contributes its slice)."""
    sh = batch_shardings(mesh)
    out = {}
    pc, pi = jax.process_count(), jax.process_index()
    for k in BATCH_KEYS:
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
