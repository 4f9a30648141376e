"""MOHAWK: distilling a Transformer (`DecoderLM`) into a state-space student (`PhiMambaLM`) in three stages.

Faithful to goombalab/mohawk (distill/distill_steps/{matrices,hstates,supervised}.py, configs/Phi/1.5B):
Stage 1, matrix orientation: for every SSM layer l, || A_l(u_l) - M_l(norm_l(u_l)) ||_F averaged over (batch, head),
  where u_l is the TEACHER's input to layer l (its residual stream), A_l the teacher's attention probabilities and
  M_l the student mixer's materialized transfer matrix (D on the diagonal). The mixer AND the block's input norm
  train (the original runs the student layer with run_mlp_component=False: norm + mixer get gradients).
Stage 2, hidden-state alignment (stage2="block", the original's `hstates`): the whole student block l on u_l
  against the teacher's NEXT hidden state u_{l+1} (MLP path included, as sequential teachers need), un-squared
  per-token L2, averaged; the block's mixer, norms and MLP train. stage2="mixer" (phi-mamba's freeze_mlp=True
  skeleton, the paper's Table 5 variant): mixer output against the teacher's attention output, mixer only.
  In stages 1 and 2 every layer is an independent problem: one jitted step evaluates all layers' losses on the same
  teacher pass and applies one (element-wise, unclipped) AdamW update, so layer l's update depends on loss l only.
Stage 3, weight transfer + knowledge distillation: MLPs, norms, embeddings and head are the teacher's (copied by
  `transfer_weights` before stage 1), then the whole student (a hybrid's attention layers included) trains end to
  end on the original's CE(softmax(teacher), log_softmax(student / T)) (kd="original"; kd="hinton":
  T^2 * CE(softmax(teacher / T), log_softmax(student / T))); `freeze_mlp` / `freeze_attention` are options.

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
from jaxlm.models.phi_mamba import ORIGINAL_N_LAYER, PhiMambaConfig, PhiMambaLM, original_mixer_init
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


MIXER_INITS = ("original", "identity-conv", "none")


def transfer_weights(teacher: DecoderLM, student: PhiMambaLM, identity_conv: bool = True, *, init: str = "original",
                     seed: int = 0, n_layer: int = ORIGINAL_N_LAYER):
    """Copy embeddings, final norm, head, and per layer the norms and MLP (and, for attention layers of a hybrid, the
    attention) from the teacher, and initialise the SSM mixers: init="original" (default) as goombalab/mohawk
    (`original_mixer_init`: gate open, torch-uniform in_proj, out_proj / sqrt(n_layer), identity conv; key from
    `seed`, one per layer), "identity-conv" (jaxlm's earlier init: the mixer's own normal init, z_bias 0, identity
    conv), "none" (leave the mixers; identity_conv=False is the same)."""
    if init not in MIXER_INITS:
        raise ConfigError(f"transfer_weights init={init!r}: expected one of {MIXER_INITS}")
    if not identity_conv:
        init = "none"
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
        elif init == "original":
            original_mixer_init(blk.mixer, jax.random.fold_in(jax.random.key(seed), i), n_layer)
        elif init == "identity-conv":
            blk.mixer.set_identity_conv()


# ----------------------------------------------------------------------------------------------------------------
# losses

def teacher_targets(teacher: DecoderLM, ids, probs: bool = True, block_outputs: bool = False):
    """One teacher pass: per-layer block inputs [L,B,T,D], attention probabilities [L,B,H,T,T] (or None) and
    per-layer outputs [L,B,T,D]: the attention outputs (after the output projection), or with block_outputs the
    block outputs, i.e. the teacher's next hidden states (un-normed, also for the last layer, as the original's
    `all_hidden_states`)."""
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
        return y, (x, p, y if block_outputs else a)

    _, (ins, ps, outs) = jax.lax.scan(body, h, st)
    return ins, ps, outs


STAGE2_TARGETS = ("block", "mixer")


def layer_losses(student: PhiMambaLM, stage: int, ins, probs, outs, stage2: str = "block"):
    """[n_ssm_layers] stage-1 (Frobenius) or stage-2 (per-token L2) losses, each layer on the teacher's input.
    Stage 2: stage2="block" runs the whole student block on ins[l] against outs[l] = the teacher's block output;
    "mixer" the mixer alone on norm(ins[l]) against outs[l] = the teacher's attention output."""
    losses = []
    for i, blk in enumerate(student.layers):
        if blk.is_attention:
            continue
        if stage == 2 and stage2 == "block":
            y = blk(ins[i], PhiMambaLM.positions(ins[i]))[0]
            losses.append(jnp.sqrt(jnp.sum((y.astype(jnp.float32) - outs[i]) ** 2, axis=-1) + 1e-12).mean())
            continue
        hn = blk.attn_norm(ins[i])
        if stage == 1:
            M = blk.mixer.transfer_matrix(hn)
            losses.append(jnp.sqrt(jnp.sum((M - probs[i]) ** 2, axis=(-2, -1)) + 1e-12).mean())
        else:
            y = blk.mixer(hn)
            losses.append(jnp.sqrt(jnp.sum((y.astype(jnp.float32) - outs[i]) ** 2, axis=-1) + 1e-12).mean())
    return jnp.stack(losses)


KD_FORMS = ("original", "hinton")


def kd_loss(student_logits, teacher_logits, temperature: float = 1.0, form: str = "original"):
    """Token-mean cross-entropy of the student's tempered distribution to the teacher's. form="original"
    (goombalab/mohawk supervised.py: `cross_entropy(input=student / T, target=softmax(teacher))`): the teacher is
    NOT tempered and there is no T^2 factor; form="hinton": T^2 * CE(softmax(teacher / T), log_softmax(student / T)).
    The two agree at T = 1."""
    if form not in KD_FORMS:
        raise ConfigError(f"kd form={form!r}: expected one of {KD_FORMS}")
    t = float(temperature)
    hinton = form == "hinton"
    p = jax.nn.softmax(teacher_logits.astype(jnp.float32) / (t if hinton else 1.0), axis=-1)
    logq = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    return -(p * logq).sum(-1).mean() * (t * t if hinton else 1.0)


# ----------------------------------------------------------------------------------------------------------------
# the stages as Tasks of the shared engine (jaxlm.train)

def _in_layers(layers, parts):
    """nnx filter: parameters under layers/<i>/<part> for i in `layers`, part in `parts`."""
    layers, parts = frozenset(int(i) for i in layers), tuple(parts)

    def f(path, _value):
        for j in range(len(path) - 2):
            if path[j] == "layers" and isinstance(path[j + 1], int):
                return path[j + 1] in layers and path[j + 2] in parts
        return False

    return nnx.All(nnx.Param, f)


def trainable_filter(stage: int, freeze_mlp: bool = False, freeze_attention: bool = False, *, ssm_layers=None,
                     stage1_norm: bool = True, stage2: str = "block"):
    """The parameters each stage trains, as the original (a parameter trains iff its stage's loss reaches it):
    stage 1 the SSM layers' mixer and input norm (stage1_norm=False: the mixer only); stage 2 with stage2="block"
    the SSM layers' whole block (mixer, norms, MLP), with "mixer" the mixers only; stage 3 everything, minus the
    MLPs (freeze_mlp) and minus a hybrid's attention layers (freeze_attention). `ssm_layers`: the indices of the
    SSM layers (None: every layer with a `mixer`, which is what a path filter without indices can see)."""
    if stage2 not in STAGE2_TARGETS:
        raise ConfigError(f"stage2={stage2!r}: expected one of {STAGE2_TARGETS}")
    if stage in (1, 2):
        parts = {1: ("mixer", "attn_norm") if stage1_norm else ("mixer",),
                 2: ("mixer", "attn_norm", "mlp_norm", "mlp") if stage2 == "block" else ("mixer",)}[stage]
        if ssm_layers is None:
            if parts != ("mixer",):
                raise ConfigError("trainable_filter: stages 1-2 train norms/MLPs of the SSM layers only: pass "
                                  "ssm_layers= (their indices)")
            return nnx.All(nnx.Param, nnx.PathContains("mixer"))
        return _in_layers(ssm_layers, parts)
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

    Options (defaults = the original): stage1_norm (stage 1 trains the input norm too), stage2 ("block": block
    output vs the teacher's next hidden state; "mixer": mixer output vs attention output), kd ("original" |
    "hinton") with `temperature`, freeze_mlp / freeze_attention (stage 3).

    Stages 1-2: loss = sum over SSM layers of the layer's loss (weight 1), every layer on the teacher's input to it,
    so in ONE jitted step layer l's gradient is that of its own loss; with an element-wise optimizer (AdamW, no
    global-norm clipping: `stage_config`) the layers train as independent problems. Metrics: per-layer losses.
    Stage 3: loss = Hinton KD (T^2 * CE to the teacher's tempered distribution); metrics: kd and the student's
    next-token CE. Eval (every stage): the student's next-token NLL (held-out perplexity)."""

    units = "tokens"
    batch_spec = {"inputs": ("batch", "length"), "targets": ("batch", "length")}
    eval_keys = ("inputs", "targets")

    def __init__(self, stage: int, student: PhiMambaLM, teacher: DecoderLM, *, temperature: float = 1.0,
                 freeze_mlp: bool = False, freeze_attention: bool = False, stage1_norm: bool = True,
                 stage2: str = "block", kd: str = "original"):
        if kd not in KD_FORMS:
            raise ConfigError(f"kd={kd!r}: expected one of {KD_FORMS}")
        if stage not in (1, 2, 3):
            raise ConfigError(f"stage={stage}: expected 1, 2 or 3")
        if stage in (1, 2):
            deep = [i for i, b in enumerate(student.layers) if not b.is_attention and i >= teacher.cfg.num_layers]
            if deep:
                raise ConfigError(f"SSM layers {deep} are deeper than the teacher's {teacher.cfg.num_layers} layers")
        self.stage, self.student, self.teacher = stage, student, teacher
        self.temperature, self.kd, self.stage2 = float(temperature), kd, stage2
        self.name = f"mohawk-stage{stage}"
        self.cfg = student.cfg
        ssm = [i for i, b in enumerate(student.layers) if not b.is_attention]
        self.param_filter = nnx.All(nnx.PathContains("student"), trainable_filter(
            stage, freeze_mlp, freeze_attention, ssm_layers=ssm, stage1_norm=stage1_norm, stage2=stage2))
        self._filter_key = (stage1_norm, stage2, freeze_mlp, freeze_attention)
        self.traces = 0  # how many times the loss was traced (one compiled step for all layers: 1 per run)

    @property
    def step_key(self):
        return ("mohawk", self.stage, self.temperature, self.kd, self._filter_key)

    def build(self, rngs):
        return Distill(PhiMambaLM(self.student.cfg, rngs=rngs), DecoderLM(self.teacher.cfg, rngs=rngs))

    def pretrained(self):
        return Distill(self.student, self.teacher)

    def loss(self, model, batch, rng):
        self.traces += 1  # runs at trace time only
        ids = batch["inputs"]
        if self.stage in (1, 2):
            ins, probs, outs = jax.lax.stop_gradient(teacher_targets(
                model.teacher, ids, probs=self.stage == 1, block_outputs=self.stage == 2 and self.stage2 == "block"))
            per_layer = layer_losses(model.student, self.stage, ins, probs, outs, self.stage2)
            return per_layer.sum(), jnp.float32(1.0), {"layer_loss": per_layer}
        tl = jax.lax.stop_gradient(model.teacher(ids))
        sl = model.student(ids)
        kd = kd_loss(sl, tl, self.temperature, self.kd)
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


OPTIMS = ("original", "jaxlm")


def stage_config(stage: int, steps: int, lr: float, *, seq_len: int, batch: int, seed: int = 0,
                 data_seed: int = 0, save_every: int = 50, log_every: int = 10, optim: str = "original",
                 grad_accum: int = 1, warmup_frac: float | None = None):
    """The engine RunConfig of one stage. AdamW (0.9, 0.95, eps 1e-8) with NO gradient clipping (as the original;
    clipping by the global norm would also couple the independent layers of stages 1-2), on a warmup-stable-decay
    schedule, `grad_accum` micro-batches per step (the original's effective batch via accumulation).
    optim="original" (goombalab/mohawk configs/Phi/1.5B/base/optimizer.yaml + distill/utils.py setup_scheduler):
      weight decay 0.1 on EVERY trained parameter (torch AdamW over one parameter group: norms, biases, D included),
      warmup int(5% of steps) from 0, stable, linear decay over the last int(10%) steps to 1e-8.
    optim="jaxlm" (the earlier jaxlm choice): no weight decay, 10% warmup from lr/100, 10% decay to lr/100."""
    from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig

    if optim not in OPTIMS:
        raise ConfigError(f"stage_config optim={optim!r}: expected one of {OPTIMS}")
    steps = max(int(steps), 1)
    if optim == "original":
        w = int(steps * (0.05 if warmup_frac is None else warmup_frac))
        sched = LRSchedule("wsd", peak=lr, end=1e-8, warmup=w, decay_steps=int(steps * 0.1), warmup_from=0.0)
        ocfg = OptimConfig(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=None, no_decay=())
    else:
        w, d = max(int(steps * (0.1 if warmup_frac is None else warmup_frac)), 1), max(int(steps * 0.1), 1)
        sched = LRSchedule("wsd", peak=lr, end=lr * 0.01, warmup=w, decay_steps=d, warmup_from=lr * 0.01)
        ocfg = OptimConfig(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, clip_norm=None)
    return RunConfig(name=f"mohawk-stage{stage}", model=None, optim=ocfg,
                     train=TrainConfig(seq_len=seq_len, global_batch=batch, grad_accum=grad_accum, seed=seed,
                                       data_seed=data_seed, log_every=log_every, eval_batches=0,
                                       ckpt_every=save_every, keep_latest=2),
                     phases=(PhaseConfig(f"stage{stage}", steps, {"language": 1.0}, lr=sched),)).validate()


__all__ = ["student_config", "truncate_teacher", "transfer_weights", "teacher_targets", "layer_losses", "kd_loss",
           "trainable_filter", "Distill", "StageTask", "stage_config", "MIXER_INITS", "STAGE2_TARGETS", "KD_FORMS",
           "OPTIMS"]
