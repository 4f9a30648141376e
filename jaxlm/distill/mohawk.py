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
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxlm.config import DecoderConfig
from jaxlm.errors import ConfigError
from jaxlm.models.decoder import DecoderLM
from jaxlm.models.phi_mamba import PhiMambaConfig, PhiMambaLM


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


def next_token_nll(logits, ids):
    """Mean next-token negative log-likelihood of ids[:, 1:] under logits[:, :-1]."""
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1).mean()


# ----------------------------------------------------------------------------------------------------------------
# jitted steps

def trainable_filter(stage: int, freeze_mlp: bool = False, freeze_attention: bool = False):
    """Stages 1-2: the SSM mixers only. Stage 3: everything, minus the MLPs (freeze_mlp) and minus the attention
    mixers kept by a hybrid student (freeze_attention)."""
    if stage in (1, 2):
        return nnx.All(nnx.Param, nnx.PathContains("mixer"))
    frozen = [nnx.PathContains("mlp")] * freeze_mlp + [nnx.PathContains("attn")] * freeze_attention
    return nnx.All(nnx.Param, nnx.Not(nnx.Any(*frozen))) if frozen else nnx.Param


@dataclass
class StageStep:
    """A stage's jitted update: `params, opt_state, loss = step(params, opt_state, ids)`; `losses_fn` gives the
    per-layer losses (stages 1-2) or the KD loss (stage 3) without updating. `traces` counts (re)tracings."""

    stage: int
    graphdef: object
    frozen: object
    teacher: tuple
    tx: object
    fn: object = None
    counter: list = dataclasses.field(default_factory=lambda: [0])

    @property
    def traces(self) -> int:
        """How many times the (shared) compiled step was traced."""
        return self.counter[0]

    def __call__(self, params, opt_state, ids):
        return self.fn(params, opt_state, self.frozen, self.teacher, ids)


def split_student(student: PhiMambaLM, stage: int, freeze_mlp: bool = False, freeze_attention: bool = False):
    """(graphdef, trainable params as a pure nested dict, frozen rest State) of the student for a stage."""
    gdef, params, frozen = nnx.split(student, trainable_filter(stage, freeze_mlp, freeze_attention), ...)
    return gdef, nnx.to_pure_dict(params), frozen


def make_stage_step(student: PhiMambaLM, teacher: DecoderLM, stage: int, tx, *, temperature: float = 1.0,
                    freeze_mlp: bool = False, freeze_attention: bool = False) -> tuple[StageStep, object]:
    """Returns (step, trainable params). Stages 1-2: ONE jax.jit over all layers (loss = sum of per-layer losses;
    the gradient of layer l's parameters is the gradient of its own loss, and AdamW is element-wise).
    In stages 1-2 the teacher may be truncated to the first layers (`truncate_teacher`): only the student's SSM
    layers below its depth are trained (a hybrid student keeps attention above)."""
    if stage not in (1, 2, 3):
        raise ConfigError(f"stage={stage}: expected 1, 2 or 3")
    if stage in (1, 2):
        deep = [i for i, b in enumerate(student.layers) if not b.is_attention and i >= teacher.cfg.num_layers]
        if deep:
            raise ConfigError(f"SSM layers {deep} are deeper than the teacher's {teacher.cfg.num_layers} layers")
    gdef, params, frozen = split_student(student, stage, freeze_mlp, freeze_attention)
    tgdef, tstate = nnx.split(teacher)
    st = StageStep(stage, gdef, frozen, tstate, tx)

    def loss_fn(p, frozen_, tstate_, ids):
        model = nnx.merge(gdef, nnx.State(p), frozen_)
        t = nnx.merge(tgdef, tstate_)
        if stage in (1, 2):
            ins, probs, outs = teacher_targets(t, ids, probs=stage == 1)
            ins, outs = jax.lax.stop_gradient(ins), jax.lax.stop_gradient(outs)
            probs = None if probs is None else jax.lax.stop_gradient(probs)
            per_layer = layer_losses(model, stage, ins, probs, outs)
            return per_layer.sum(), per_layer
        tl = jax.lax.stop_gradient(t(ids))
        sl = model(ids)
        kd = kd_loss(sl, tl, temperature)
        return kd, jnp.stack([kd, next_token_nll(sl, ids)])

    counter = st.counter

    def step(p, opt_state, frozen_, tstate_, ids):
        counter[0] += 1  # runs at trace time only
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, frozen_, tstate_, ids)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, aux

    # compiled functions are shared by every StageStep with the same structure, stage, optimizer and options
    # (a resumed run in the same process, or the next run of a sweep, does not recompile)
    key = (gdef, tgdef, stage, tx, float(temperature), bool(freeze_mlp), bool(freeze_attention))
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = (jax.jit(step), jax.jit(lambda p, f, t, ids: loss_fn(p, f, t, ids)[1]), st.counter)
    st.fn, st.loss_fn, st.counter = _STEP_CACHE[key]
    return st, params


_STEP_CACHE: dict = {}


@functools.lru_cache(maxsize=32)
def make_optimizer(lr: float, steps: int, weight_decay: float = 0.0, warmup_frac: float = 0.1):
    """AdamW with a warmup-stable-decay schedule (10% warmup, 10% decay), no gradient clipping (clipping by the
    global norm would couple the independent layers of stages 1-2)."""
    steps = max(int(steps), 1)
    w = max(int(steps * warmup_frac), 1)
    d = max(int(steps * 0.1), 1)
    sched = optax.join_schedules([optax.linear_schedule(lr * 0.01, lr, w), optax.constant_schedule(lr),
                                  optax.linear_schedule(lr, lr * 0.01, d)], [w, max(steps - d, w + 1)])
    return optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=weight_decay)


def merge_params(student: PhiMambaLM, params):
    """Write trained params (a pure dict from a stage step, possibly a subset) back into the student module."""
    nnx.update(student, nnx.State(params))


# ----------------------------------------------------------------------------------------------------------------
# data: the embedded corpus (Python's bundled documentation topics)

def pydoc_texts(split: str = "train", holdout_every: int = 10) -> list[str]:
    """pydoc_data.topics.topics values, sorted by key; every `holdout_every`-th topic is held out ("eval")."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    if split == "train":
        keys = [k for i, k in enumerate(keys) if i % holdout_every != 0]
    elif split == "eval":
        keys = [k for i, k in enumerate(keys) if i % holdout_every == 0]
    else:
        raise ConfigError(f"split={split!r}: expected 'train' or 'eval'")
    return [topics[k] for k in keys]


def tokenize_corpus(texts, encode, eos_id=None) -> np.ndarray:
    ids = []
    for t in texts:
        ids.extend(encode(t))
        if eos_id is not None:
            ids.append(int(eos_id))
    return np.asarray(ids, np.int32)


def batch_at(tokens: np.ndarray, step: int, batch: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """Deterministic random windows for a given step (so a resumed run sees exactly the same batches)."""
    if len(tokens) <= seq_len:
        raise ConfigError(f"corpus has {len(tokens)} tokens, fewer than seq_len={seq_len}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch)
    return np.stack([tokens[s:s + seq_len] for s in starts])


def eval_batches(tokens: np.ndarray, batch: int, seq_len: int, max_batches: int) -> list[np.ndarray]:
    """Consecutive non-overlapping windows of the held-out tokens."""
    n = min(len(tokens) // seq_len, batch * max_batches)
    wins = tokens[: n * seq_len].reshape(n, seq_len)
    return [wins[i:i + batch] for i in range(0, n - n % batch or n, batch)][:max_batches]


@jax.jit(static_argnums=0)
def _model_nll(gdef, state, ids):
    return next_token_nll(nnx.merge(gdef, state)(ids), ids)


def perplexity(model, batches) -> float:
    """exp(mean next-token NLL) over the batches (one compiled function per model structure)."""
    gdef, state = nnx.split(model)
    nll = [float(_model_nll(gdef, state, jnp.asarray(b))) for b in batches]
    return float(np.exp(np.mean(nll)))


__all__ = ["student_config", "truncate_teacher", "transfer_weights", "teacher_targets", "layer_losses", "kd_loss",
           "next_token_nll", "make_stage_step", "make_optimizer", "merge_params", "split_student", "pydoc_texts",
           "tokenize_corpus", "batch_at", "eval_batches", "perplexity", "StageStep", "trainable_filter"]
