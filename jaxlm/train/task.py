"""The Task protocol: what one kind of training needs to say; everything else (the loop, optimizer, phases and
freezing, checkpoints, resume, metrics, shardings) is the engine's and shared by every Task.

A Task is any object with

    name: str                                  # shown in logs, stored in the checkpoint's compat record
    batch_spec: {key: logical axes}            # e.g. {"inputs": ("batch", "length"), "image": ("batch", None, ...)}
    build(rngs: nnx.Rngs) -> nnx.Module        # the model; its Params carry logical axis names (`axes` metadata)
    loss(model, batch, rng) -> (loss_sum, weight, metrics)

`loss_sum` and `weight` are scalars (e.g. summed token losses and the token count): the step minimises
sum(loss_sum) / sum(weight) over the global batch, which keeps gradient accumulation exact. `metrics` is a dict
of arrays that ADD across micro-batches (sums and counts); `rng` is a fresh key per step (and micro-batch).

Optional members (`Task` below gives the defaults; subclassing it is the easy way to write one):

    param_filter                               # nnx filter of the trained state (default nnx.Param); every other
                                               # variable (e.g. a teacher) is frozen input passed into the step
    pretrained() -> nnx.Module | None          # concrete start (loaded weights, a teacher); None = fresh init
    eval_loss(model, batch) -> (loss_sum, weight)   # held-out metric (perplexity = exp(sum / weight))
    eval_keys: tuple                           # batch keys the eval step reads
    step_metrics(metric_sums, weight) -> dict  # traced, after accumulation (e.g. per-source means)
    log_metrics(host_metrics) -> dict          # JSON fields added to each metrics.jsonl train record
    compat(run_cfg) -> dict                    # JSON a checkpoint must match to be resumed
    step_key                                   # hashable: lets runs in one process share compiled steps
    check_mesh(mesh, batch_size)               # raise MeshError early
    flops_per_example(run_cfg) -> float        # training FLOPs per example (MFU); 0 = unknown
    units, units_per_example(run_cfg)          # throughput unit ("tokens" for LMs, "examples" default)

`LMTask` is the next-token objective every LM recipe trains; `ArrayPipeline` feeds in-memory arrays to any Task.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.data.stepped import SteppedPipeline
from jaxlm.errors import ConfigError, MeshError, ShapeError


class Task:
    """Base class with the optional members' defaults; subclasses set `name`, `batch_spec`, `build`, `loss`."""

    name: str = "task"
    batch_spec: Mapping[str, tuple] = {}
    param_filter: Any = nnx.Param
    units: str = "examples"

    def build(self, rngs: nnx.Rngs) -> nnx.Module:
        raise NotImplementedError

    def loss(self, model, batch: dict, rng) -> tuple:
        raise NotImplementedError

    # ---- optional
    def pretrained(self):
        return None

    @property
    def eval_keys(self) -> tuple:
        return tuple(self.batch_spec)

    def eval_loss(self, model, batch: dict):
        tot, w, _ = self.loss(model, batch, jax.random.key(0))
        return tot, w

    def step_metrics(self, sums: dict, weight) -> dict:
        return sums

    def log_metrics(self, m: dict) -> dict:
        return {}

    def compat(self, run_cfg) -> dict:
        t = run_cfg.train
        return {"task": {"name": self.name, "batch_spec": {k: list(v) for k, v in self.batch_spec.items()}},
                "data": {"global_batch": t.global_batch, "data_seed": t.data_seed}}

    def check_mesh(self, mesh, batch_size: int) -> None:
        dp = mesh.shape["data"] * mesh.shape["fsdp"]
        if batch_size % dp:
            raise MeshError(f"batch size {batch_size} is not divisible by data*fsdp={dp} of the mesh")

    def flops_per_example(self, run_cfg) -> float:
        return 0.0

    def units_per_example(self, run_cfg) -> int:
        return 1


# ---------------------------------------------------------------------------------------------- the LM task


def token_nll(logits, targets):
    """Per-token negative log-likelihood [B, T] (0 where target < 0) and the mask."""
    mask = targets >= 0
    safe = jnp.where(mask, targets, 0)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return jnp.where(mask, lse - picked, 0.0), mask


class LMTask(Task):
    """Next-token cross entropy of a `DecoderLM` over {"inputs", "targets", "source_id"} token batches (targets < 0
    are ignored); metrics per data source. The objective of crystal / amber / mobillama."""

    name = "lm"
    units = "tokens"
    batch_spec = {"inputs": ("batch", "length"), "targets": ("batch", "length"), "source_id": ("batch",)}
    eval_keys = ("inputs", "targets")

    def __init__(self, cfg, sources=("data",)):
        self.cfg = cfg
        self.sources = list(sources)

    @property
    def step_key(self):
        return ("lm", len(self.sources))

    def build(self, rngs):
        from jaxlm.models.decoder import DecoderLM

        return DecoderLM(self.cfg, rngs=rngs)

    def _nll(self, model, batch):
        return token_nll(model(batch["inputs"]), batch["targets"])

    def loss(self, model, batch, rng):
        nll, mask = self._nll(model, batch)
        per_seq = nll.sum(-1)
        per_cnt = mask.sum(-1).astype(jnp.float32)
        onehot = jax.nn.one_hot(batch["source_id"], len(self.sources), dtype=jnp.float32)  # [B, S]
        cnt = mask.sum().astype(jnp.float32)
        return nll.sum(), cnt, {"source_sum": per_seq @ onehot, "source_tokens": per_cnt @ onehot}

    def eval_loss(self, model, batch):
        nll, mask = self._nll(model, batch)
        return nll.sum(), mask.sum().astype(jnp.float32)

    def step_metrics(self, sums, weight):
        return {"tokens": weight, "source_loss": sums["source_sum"] / jnp.maximum(sums["source_tokens"], 1.0),
                "source_tokens": sums["source_tokens"]}

    def log_metrics(self, m):
        return {f"loss/{s}": float(m["source_loss"][i]) for i, s in enumerate(self.sources)
                if m["source_tokens"][i] > 0}

    def compat(self, run_cfg):
        from jaxlm.train.config import to_dict

        t = run_cfg.train
        return {"model": to_dict(self.cfg),
                "data": {"seq_len": t.seq_len, "global_batch": t.global_batch, "data_seed": t.data_seed,
                         "sources": list(self.sources), "vocab_size": int(self.cfg.vocab_size)}}

    def check_mesh(self, mesh, batch_size):
        from jaxlm.sharding import check_mesh_for_model

        check_mesh_for_model(mesh, self.cfg, batch_size)

    def flops_per_example(self, run_cfg):
        return flops_per_token(self.cfg, run_cfg.train.seq_len) * run_cfg.train.seq_len

    def units_per_example(self, run_cfg):
        return run_cfg.train.seq_len


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token (MaxText convention: matmuls x 6, causal attention halved, no embedding gather)."""
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    qd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = d * qd + 2 * d * kd + qd * d + (3 if cfg.mlp == "swiglu" else 2) * d * f
    matmul = L * per_layer + d * cfg.vocab_size
    attn = L * 2 * seq_len * qd  # QK^T and PV: 2 * 2 * T * qd per token forward, halved for causal
    return 6.0 * matmul + 3.0 * attn


# ---------------------------------------------------------------------------------------------- array data


class ArrayPipeline(SteppedPipeline):
    """Deterministic, resumable batches of in-memory arrays (images, latents, regression pairs, ...).

    `arrays` maps batch keys to arrays sharing their first (example) axis. Step s's batch is a pure function of
    (seed, s): examples are drawn by a seeded permutation per epoch, so `batch_at(s)` needs no history and the
    iterator state is just the next step (the engine's pipeline contract: next(), get_state(), set_state()).
    With several processes each yields its rows of the global batch.
    """

    def __init__(self, arrays: Mapping[str, Any], global_batch: int, *, seed: int = 0, shuffle: bool = True,
                 process_index: int = 0, process_count: int = 1):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if not self.arrays:
            raise ConfigError("ArrayPipeline: no arrays given")
        sizes = {k: v.shape[0] for k, v in self.arrays.items()}
        self.n = next(iter(sizes.values()))
        if len(set(sizes.values())) != 1:
            raise ShapeError(f"ArrayPipeline: arrays disagree on the number of examples: {sizes}")
        self.B, self.seed, self.shuffle = int(global_batch), int(seed), bool(shuffle)
        if self.B > self.n:
            raise ConfigError(f"ArrayPipeline: global_batch={self.B} exceeds the {self.n} examples")
        if self.B % process_count:
            raise ConfigError(f"ArrayPipeline: global_batch={self.B} is not divisible by {process_count} processes")
        k = self.B // process_count
        self.rows = slice(process_index * k, (process_index + 1) * k)
        self.per_epoch = self.n // self.B
        self.step = 0

    def indices_at(self, step: int) -> np.ndarray:
        epoch, i = divmod(int(step), self.per_epoch)
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        return order[i * self.B:(i + 1) * self.B]

    def batch_at(self, step: int) -> dict:
        idx = self.indices_at(step)[self.rows]
        return {**{k: v[idx] for k, v in self.arrays.items()}, "step": np.int64(step)}

    def identity(self) -> dict:
        return {"seed": self.seed}


__all__ = ["Task", "LMTask", "ArrayPipeline", "token_nll", "flops_per_token"]
