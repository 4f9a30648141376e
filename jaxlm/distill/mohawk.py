"""MOHAWK: distilling a Transformer (`DecoderLM`) into a state-space student (`PhiMambaLM`) in three stages.

Stage 1, matrix orientation: for every SSM layer l, || A_l(u_l) - M_l(u_l) ||_F averaged over (batch, head), where
  u_l is the TEACHER's input to layer l, A_l the teacher's attention probabilities and M_l the student mixer's
  materialized transfer matrix (D on the diagonal), both on the layer's (shared, teacher-copied) input norm of u_l.
Stage 2, hidden-state alignment: || Attn_l(norm(u_l)) - Mixer_l(norm(u_l)) ||_2 per token, averaged (un-squared),
  again on the teacher's inputs. Only mixer parameters train; MLPs, norms, embeddings and head are frozen.
  In stages 1 and 2 every layer is an independent problem: one jitted step evaluates all layers' losses on the same
  teacher pass and applies one (element-wise, unclipped) AdamW update, so layer l's update depends on loss l only.
Stage 3, weight transfer + knowledge distillation: MLPs, norms, embeddings and head are the teacher's (copied by
  `transfer_weights` before stage 1, so stages 1-2 already see the teacher's norms), then the whole student trains
  end to end on T^2 * CE(softmax(teacher / T), log_softmax(student / T)); `freeze_mlp` keeps the MLPs fixed.

Each stage is a `StageTask` trained by the shared engine (`jaxlm.train.train`: optimizer and schedule from
`stage_config`, data from `jaxlm.data`, held-out perplexity from the Task's eval, orbax checkpoints and exact
resume); `recipes.mohawk` chains the three runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import DecoderConfig
from jaxlm.errors import ConfigError
from jaxlm.models.decoder import DecoderLM
from jaxlm.models.phi_mamba import PhiMambaConfig, PhiMambaLM
from jaxlm.train.task import Task, token_nll


# ----------------------------------------------------------------------------------------------------------------
# teacher / student construction

def student_config(teacher_cfg: DecoderConfig, *, d_state: int | None = None, attn_layers=(), chunk_size: int = 128,
                   d_conv: int = 4) -> PhiMambaConfig:
    """A student with the teacher's blocks, one SSM head per attention head, d_state = head_dim (B, C play K, Q)."""
    if teacher_cfg.shared_mlp:
        raise ConfigError("MOHAWK weight transfer needs one MLP per layer; the teacher has shared_mlp=True")
    return PhiMambaConfig(base=teacher_cfg, d_state=d_state or teacher_cfg.head_dim, ssm_heads=teacher_cfg.num_heads,
                          expand=teacher_cfg.num_heads * teacher_cfg.head_dim // teacher_cfg.hidden_size,
                          d_conv=d_conv, chunk_size=chunk_size, attn_layers=tuple(attn_layers))


def truncate_teacher(teacher: DecoderLM, num_layers: int) -> DecoderLM:
    """The first `num_layers` blocks of a DecoderLM, with its embeddings, final norm and head."""
    cfg = teacher.cfg
    if not 0 < num_layers <= cfg.num_layers:
        raise ConfigError(f"teacher_layers={num_layers}: expected 1..{cfg.num_layers}")
    if num_layers == cfg.num_layers:
        return teacher
    small = nnx.eval_shape(lambda: DecoderLM(cfg.replace(num_layers=num_layers), rngs=nnx.Rngs(0)))
    state = nnx.state(teacher)
    sliced = jax.tree_util.tree_map_with_path(
        lambda path, v: v[:num_layers] if any(getattr(p, "key", None) == "layers" for p in path) else v, state)
    nnx.update(small, sliced)
    return small


def _copy(dst, src):
    dst[...] = jnp.asarray(src, dtype=dst[...].dtype)


def _copy_module(dst_mod, src_mod, index=None):
    """Copy every Param of src_mod (optionally layer `index` of a stacked module) into the same path of dst_mod."""
    src = nnx.to_flat_state(nnx.state(src_mod, nnx.Param))
    dst = dict(nnx.to_flat_state(nnx.state(dst_mod, nnx.Param)))
    for path, var in src:
        if path not in dst:
            raise ConfigError(f"weight transfer: student has no parameter {'.'.join(map(str, path))}")
        val = var[...] if index is None else var[...][index]
        if tuple(val.shape) != tuple(dst[path][...].shape):
            raise ConfigError(f"weight transfer: {'.'.join(map(str, path))} has shape {val.shape} in the teacher, "
                              f"{dst[path][...].shape} in the student")
        _copy(dst[path], val)


def transfer_weights(teacher: DecoderLM, student: PhiMambaLM, identity_conv: bool = True):
    """Copy embeddings, final norm, head, and per layer the norms and MLP (and, for attention layers of a hybrid, the
    attention) from the teacher. With identity_conv the SSM convs start as the identity (MOHAWK stage 1 init)."""
    tc = teacher.cfg
    sc = student.cfg.base
    if tc.num_layers != sc.num_layers:
        raise ConfigError(f"teacher has {tc.num_layers} layers, student {sc.num_layers}")
    _copy(student.embed, teacher.embed[...])
    _copy_module(student.final_norm, teacher.final_norm)
    if teacher.lm_head is not None:
        _copy_module(student.lm_head, teacher.lm_head)
    for i, blk in enumerate(student.layers):
        _copy_module(blk.attn_norm, teacher.layers.attn_norm, i)
        if blk.mlp_norm is not None:
            _copy_module(blk.mlp_norm, teacher.layers.mlp_norm, i)
        _copy_module(blk.mlp, teacher.layers.mlp, i)
        if blk.is_attention:
            _copy_module(blk.attn, teacher.layers.attn, i)
        elif identity_conv:
            blk.mixer.set_identity_conv()


# ----------------------------------------------------------------------------------------------------------------
# losses

def teacher_targets(teacher: DecoderLM, ids, probs: bool = True):
    """One teacher pass: per-layer block inputs [L,B,T,D], attention probabilities [L,B,H,T,T] (or None) and
    attention outputs (after the output projection) [L,B,T,D]."""
    B, T = ids.shape
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    h = teacher.embed_tokens(ids)
    gdef, st = nnx.split(teacher.layers)

    def body(x, s):
        blk = nnx.merge(gdef, s)
        hn = blk.attn_norm(x)
        a, _ = blk.attn(hn, pos)
        p = blk.attn.probs(hn, pos) if probs else None
        mlp = blk.mlp if blk.mlp is not None else teacher.shared_mlp
        if blk.parallel:
            y = x + a + mlp(hn)
        else:
            y = x + a
            y = y + mlp(blk.mlp_norm(y))
        return y, (x, p, a)

    _, (ins, ps, outs) = jax.lax.scan(body, h, st)
    return ins, ps, outs


def layer_losses(student: PhiMambaLM, stage: int, ins, probs, outs):
    """[n_ssm_layers] stage-1 (Frobenius) or stage-2 (per-token L2) losses, each layer on the teacher's input."""
    losses = []
    for i, blk in enumerate(student.layers):
        if blk.is_attention:
            continue
        hn = blk.attn_norm(ins[i])
        if stage == 1:
            M = blk.mixer.transfer_matrix(hn)
            losses.append(jnp.sqrt(jnp.sum((M - probs[i]) ** 2, axis=(-2, -1)) + 1e-12).mean())
        else:
            y = blk.mixer(hn)
            losses.append(jnp.sqrt(jnp.sum((y.astype(jnp.float32) - outs[i]) ** 2, axis=-1) + 1e-12).mean())
    return jnp.stack(losses)


def kd_loss(student_logits, teacher_logits, temperature: float = 1.0):
    """Hinton KD: T^2 * cross-entropy of the student's tempered distribution to the teacher's."""
    t = float(temperature)
    p = jax.nn.softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
    logq = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    return -(p * logq).sum(-1).mean() * t * t


# ----------------------------------------------------------------------------------------------------------------
# the stages as Tasks of the shared engine (jaxlm.train)

def trainable_filter(stage: int, freeze_mlp: bool = False, freeze_attention: bool = False):
    """Stages 1-2: the SSM mixers only. Stage 3: everything, minus the MLPs (freeze_mlp) and minus the attention
    mixers kept by a hybrid student (freeze_attention)."""
    if stage in (1, 2):
        return nnx.All(nnx.Param, nnx.PathContains("mixer"))
    frozen = [nnx.PathContains("mlp")] * freeze_mlp + [nnx.PathContains("attn")] * freeze_attention
    return nnx.All(nnx.Param, nnx.Not(nnx.Any(*frozen))) if frozen else nnx.Param


class Distill(nnx.Module):
    """The model of a MOHAWK stage: `student` (its stage's parameters train) and `teacher` (frozen)."""

    def __init__(self, student: PhiMambaLM, teacher: DecoderLM):
        self.student = student
        self.teacher = teacher


class StageTask(Task):
    """One MOHAWK stage as a Task. The model is `Distill(student, teacher)`; the trained parameters are the student's
    stage filter (`trainable_filter`); the teacher and the student's other weights are the frozen rest that the
    engine passes into the jitted step. Batches: {"inputs", "targets"} token ids (the engine's LM batch).

    Stages 1-2: loss = sum over SSM layers of the layer's loss (weight 1), every layer on the teacher's input to it,
    so in ONE jitted step layer l's gradient is that of its own loss; with an element-wise optimizer (AdamW, no
    global-norm clipping: `stage_config`) the layers train as independent problems. Metrics: per-layer losses.
    Stage 3: loss = Hinton KD (T^2 * CE to the teacher's tempered distribution); metrics: kd and the student's
    next-token CE. Eval (every stage): the student's next-token NLL (held-out perplexity)."""

    units = "tokens"
    batch_spec = {"inputs": ("batch", "length"), "targets": ("batch", "length")}
    eval_keys = ("inputs", "targets")

    def __init__(self, stage: int, student: PhiMambaLM, teacher: DecoderLM, *, temperature: float = 1.0,
                 freeze_mlp: bool = False, freeze_attention: bool = False):
        if stage not in (1, 2, 3):
            raise ConfigError(f"stage={stage}: expected 1, 2 or 3")
        if stage in (1, 2):
            deep = [i for i, b in enumerate(student.layers) if not b.is_attention and i >= teacher.cfg.num_layers]
            if deep:
                raise ConfigError(f"SSM layers {deep} are deeper than the teacher's {teacher.cfg.num_layers} layers")
        self.stage, self.student, self.teacher = stage, student, teacher
        self.temperature = float(temperature)
        self.name = f"mohawk-stage{stage}"
        self.cfg = student.cfg
        self.param_filter = nnx.All(nnx.PathContains("student"), trainable_filter(stage, freeze_mlp, freeze_attention))
        self.traces = 0  # how many times the loss was traced (one compiled step for all layers: 1 per run)

    @property
    def step_key(self):
        return ("mohawk", self.stage, self.temperature)

    def build(self, rngs):
        return Distill(PhiMambaLM(self.student.cfg, rngs=rngs), DecoderLM(self.teacher.cfg, rngs=rngs))

    def pretrained(self):
        return Distill(self.student, self.teacher)

    def loss(self, model, batch, rng):
        self.traces += 1  # runs at trace time only
        ids = batch["inputs"]
        if self.stage in (1, 2):
            ins, probs, outs = jax.lax.stop_gradient(teacher_targets(model.teacher, ids, probs=self.stage == 1))
            per_layer = layer_losses(model.student, self.stage, ins, probs, outs)
            return per_layer.sum(), jnp.float32(1.0), {"layer_loss": per_layer}
        tl = jax.lax.stop_gradient(model.teacher(ids))
        sl = model.student(ids)
        kd = kd_loss(sl, tl, self.temperature)
        nll, mask = token_nll(sl.astype(jnp.float32), batch["targets"])
        return kd, jnp.float32(1.0), {"kd": kd, "ce": nll.sum() / jnp.maximum(mask.sum(), 1)}

    def eval_loss(self, model, batch):
        nll, mask = token_nll(model.student(batch["inputs"]).astype(jnp.float32), batch["targets"])
        return nll.sum(), mask.sum().astype(jnp.float32)

    def step_metrics(self, sums, weight):
        return {k: v / weight for k, v in sums.items()}

    def log_metrics(self, m):
        if self.stage in (1, 2):
            return {"layer_loss": [float(v) for v in m["layer_loss"]]}
        return {"kd": float(m["kd"]), "ce": float(m["ce"])}

    def compat(self, run_cfg):
        from jaxlm.train.config import to_dict

        t = run_cfg.train
        return {"task": {"name": self.name, "student": to_dict(self.student.cfg),
                         "teacher_layers": int(self.teacher.cfg.num_layers), "steps": run_cfg.total_steps},
                "data": {"seq_len": t.seq_len, "global_batch": t.global_batch, "data_seed": t.data_seed}}

    def check_mesh(self, mesh, batch_size):
        from jaxlm.sharding import check_mesh_for_model

        check_mesh_for_model(mesh, self.teacher.cfg, batch_size)

    def units_per_example(self, run_cfg):
        return run_cfg.train.seq_len


def stage_config(stage: int, steps: int, lr: float, *, seq_len: int, batch: int, seed: int = 0,
                 data_seed: int = 0, save_every: int = 50, log_every: int = 10, warmup_frac: float = 0.1):
    """The engine RunConfig of one stage: AdamW (b2 0.95, no weight decay, NO gradient clipping: clipping by the
    global norm would couple the independent layers of stages 1-2) on a warmup-stable-decay schedule (10% warmup
    from lr/100, 10% linear decay to lr/100)."""
    from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig

    steps = max(int(steps), 1)
    w, d = max(int(steps * warmup_frac), 1), max(int(steps * 0.1), 1)
    sched = LRSchedule("wsd", peak=lr, end=lr * 0.01, warmup=w, decay_steps=d, warmup_from=lr * 0.01)
    return RunConfig(name=f"mohawk-stage{stage}", model=None,
                     optim=OptimConfig(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, clip_norm=None),
                     train=TrainConfig(seq_len=seq_len, global_batch=batch, seed=seed, data_seed=data_seed,
                                       log_every=log_every, eval_batches=0, ckpt_every=save_every, keep_latest=2),
                     phases=(PhaseConfig(f"stage{stage}", steps, {"language": 1.0}, lr=sched),)).validate()


__all__ = ["student_config", "truncate_teacher", "transfer_weights", "teacher_targets", "layer_losses", "kd_loss",
           "trainable_filter", "Distill", "StageTask", "stage_config"]
