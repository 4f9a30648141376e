"""Pandora's staged training on the shared engine: one `PandoraTask` per stage, each its own run (checkpoints,
exact resume, metrics), the next stage starting from the previous one's final checkpoint. Stage (b) given a
`calibration` batch first sets the adapter's input standardization from the LLM's query states on it
(cfg.adapter_input_norm; ActNorm-style data-dependent init, see jaxlm.pandora.qformer).

    (a) "dynamics":  the video model (and the bag-of-words action embedding) learns the world's dynamics: the next
                     clip given the previous frames, conditioned on the bag-of-words action tokens, which are
                     dropped to the null condition with probability p_uncond (so it learns with and without an
                     action embedding; also the no-LLM baseline)
    (b) "align":     queries + adapter (+ the image projector and ViT, which have no pretraining here) learn to
                     turn the frozen LLM's reading of (state, action) into the video model's conditioning:
                     the diffusion loss through the FROZEN video model plus align_weight x the MSE to the stage-(a)
                     action tokens
    (c) "instruct":  adapter + queries + projector + ViT + video model on (state, action, next state) rounds

The LLM is never trained: `param_filter` keeps it out of the trained state (it is the engine's frozen `rest`, not
checkpointed, rebuilt from SmolLM2's weights by `pretrained()`); inside the trained state each stage's
`STAGE_TRAINABLE` patterns (the engine's PhaseConfig.trainable) leave the other parts bit-unchanged.
Batches: before [B, Tb, H, W, 3] and after [B, Ta, H, W, 3] float32 in [-1, 1], action_ids / action_mask [B, L].
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.diffusion import cfg_dropout, diffusion_loss
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.config import PandoraConfig
from jaxlm.pandora.model import WorldModel, build_world_model, clip_target, load_llm, schedule_of
from jaxlm.train.task import Task

STAGES = ("dynamics", "align", "instruct")
_PARTS = (r"^vit/", r"^projector/", r"^queries", r"^adapter/")
STAGE_TRAINABLE = {"dynamics": (r"^video/", r"^bow/"), "align": _PARTS, "instruct": _PARTS + (r"^video/",)}
TRAINED = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("llm")))  # everything but the LLM


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ConfigError(f"stage={stage!r}: expected one of {list(STAGES)}")
    return stage


def batch_spec_of(cfg: PandoraConfig) -> dict:
    return {"before": ("batch", None, None, None, None), "after": ("batch", None, None, None, None),
            "action_ids": ("batch", None), "action_mask": ("batch", None)}


def train_timesteps(cfg: PandoraConfig, k_t, k_hi, b: int):
    """Uniform timesteps [b], a `high_t_fraction` share of them redrawn from the noisiest 20% (t >= 0.8 T): there the
    clip is mostly unseen, so the action decides the target (what the first sampling steps need)."""
    T = cfg.diffusion_steps
    t = jax.random.randint(k_t, (b,), 0, T, jnp.int32)
    hi = jax.random.randint(jax.random.fold_in(k_hi, 1), (b,), int(0.8 * T), T, jnp.int32)
    return jnp.where(jax.random.uniform(k_hi, (b,)) < cfg.high_t_fraction, hi, t)


def align_normalizer(target, floor: float = 1e-3):
    """The stage-(b) alignment's denominator: the targets' variance across the batch [B, K, C] -> scalar, floored
    at `floor` x their mean square, so a micro-batch of one row, or a batch whose rows all carry the same action
    (variance 0), does not scale the loss by ~1e8 (and the scale depends less on how a batch is split)."""
    var = jnp.mean(jnp.square(target - target.mean(0, keepdims=True)))
    return jnp.maximum(var, floor * jnp.mean(jnp.square(target))) + 1e-12


def stage_loss(model: WorldModel, batch: dict, rng, stage: str):
    """(per-example total [B], {metric: per-example [B]}) of one stage's objective."""
    cfg = model.cfg
    before = batch["before"][:, -cfg.context_frames:]
    ids, mask = batch["action_ids"], batch["action_mask"]
    k_drop, k_diff, k_t, k_hi = jax.random.split(rng, 4)
    ctx = model.bow_tokens(ids, mask) if stage == "dynamics" else model.action_tokens(before, ids, mask)
    ctx_d = cfg_dropout({"ctx": ctx}, {"ctx": jnp.zeros((), ctx.dtype)}, k_drop, cfg.p_uncond)["ctx"]
    t = train_timesteps(cfg, k_t, k_hi, before.shape[0])
    per_ex = diffusion_loss(lambda x, t, c: model.video(x, t, c), clip_target(cfg, before, batch["after"]), k_diff,
                            schedule_of(cfg), "v", cond={"frames": before, "ctx": ctx_d}, t=t)
    metrics = {"diffusion": per_ex}
    total = per_ex
    if stage == "align" and cfg.align_weight > 0:
        target = jax.lax.stop_gradient(model.bow_tokens(ids, mask))
        al = jnp.mean(jnp.square(ctx - target), axis=(1, 2))
        if cfg.align_normalized:  # relative to how much the targets vary across the batch's actions
            al = al / align_normalizer(target)
        metrics["align"] = al
        total = total + cfg.align_weight * al
    return total, metrics


class PandoraTask(Task):
    """One training stage of Pandora. `init`: the run directory of the previous stage (its final checkpoint is the
    starting point), or a WorldModel; None starts from a fresh init (with the pretrained LLM). loss_sum = B · mean
    objective, weight = B; metrics: per-example sums (diffusion, align)."""

    param_filter = TRAINED

    def __init__(self, cfg: PandoraConfig, stage: str, init=None, calibration: dict | None = None):
        self.cfg, self.stage = cfg, check_stage(stage)
        self._calibration = calibration
        self.name = f"pandora-{stage}"
        self.batch_spec = batch_spec_of(cfg)
        self._init = init
        self._model = None

    @property
    def step_key(self):
        return ("pandora", self.cfg, self.stage)

    def build(self, rngs):
        return WorldModel(self.cfg, rngs=rngs)

    def pretrained(self):
        if self._model is None:
            if isinstance(self._init, WorldModel):
                self._model = self._init
            elif self._init is not None:
                self._model = load_world_model(self._init, self.cfg)
            elif self.cfg.llm_weights is not None:
                self._model = build_world_model(self.cfg, 0)
            if (self.stage == "align" and self.cfg.adapter_input_norm and self._calibration is not None
                    and self._model is not None):
                self._model.init_adapter_norm(self._calibration)
        return self._model

    def loss(self, model, batch, rng):
        total, m = stage_loss(model, batch, rng, self.stage)
        B = jnp.float32(total.shape[0])
        return total.sum(), B, {k: v.sum() for k, v in m.items()}

    def eval_loss(self, model, batch):
        total, _ = stage_loss(model, batch, jax.random.key(0), self.stage)
        return total.sum(), jnp.float32(total.shape[0])

    def step_metrics(self, sums, weight):
        return {k: v / jnp.maximum(weight, 1.0) for k, v in sums.items()}

    def log_metrics(self, m):
        return {k: float(m[k]) for k in ("diffusion", "align") if k in m}

    def compat(self, run_cfg):
        from jaxlm.train.config import to_dict

        t = run_cfg.train
        return {"model": {"pandora": to_dict(self.cfg)}, "task": {"name": self.name, "stage": self.stage},
                "data": {"global_batch": t.global_batch, "data_seed": t.data_seed}}


def stage_phase(stage: str, steps: int, lr, **kw):
    """The engine phase of one stage: its trainable patterns (everything else in the trained state frozen)."""
    from jaxlm.train import PhaseConfig

    return PhaseConfig(stage, steps, lr=lr, trainable=STAGE_TRAINABLE[check_stage(stage)], **kw)


ADAPTER_WARMUP_TRAINABLE = (r"^adapter/",)


def stage_phases(stage: str, steps: int, lr, adapter_warmup: float = 0.0, **kw) -> tuple:
    """The engine phases of one stage. For "align" with adapter_warmup > 0, the first round(adapter_warmup x steps)
    steps train the adapter alone ("align-adapter"), the rest every stage-(b) part: trained together from the start,
    the query embeddings, projector and ViT (lr 1e-3) moved the LLM's query states towards one constant (their
    spread across held-out rows fell 6x in 200 steps) before the adapter could read them, and the adapter learned
    only the targets' mean; with the adapter first, held-out R^2 to the stage-(a) tokens reached 0.95 (docs)."""
    check_stage(stage)
    if not 0.0 <= adapter_warmup < 1.0:
        raise ConfigError(f"adapter_warmup={adapter_warmup}: expected a share in [0, 1)")
    k = int(round(adapter_warmup * steps)) if stage == "align" else 0
    if k <= 0:
        return (stage_phase(stage, steps, lr, **kw),)
    from jaxlm.train import PhaseConfig

    return (PhaseConfig("align-adapter", k, lr=lr, trainable=ADAPTER_WARMUP_TRAINABLE, **kw),
            stage_phase(stage, steps - k, lr, **kw))


def config_diffs(saved: dict, mine: dict) -> list[str]:
    """The PandoraConfig fields (to_dict form) whose values differ between a checkpoint's record and this config.
    A field the record lacks (added to PandoraConfig after the checkpoint was written) counts as its default."""
    from jaxlm.train.config import to_dict

    defaults = to_dict(PandoraConfig())
    return sorted(k for k in set(saved) | set(mine) if saved.get(k, defaults.get(k)) != mine.get(k))


def load_world_model(run_dir, cfg: PandoraConfig, step: int | None = None, *, pretrained_llm: bool = True) -> WorldModel:
    """The WorldModel of a stage run at its latest (or `step`) checkpoint, with the LLM's pretrained weights
    (cfg.llm_weights; a random-LLM config rebuilds the same seed-0 LLM the run used). A checkpoint made with
    another config raises CheckpointError naming the differing fields."""
    from jaxlm.train.checkpoint import restore_recorded_params
    from jaxlm.train.config import to_dict

    mine = to_dict(cfg)
    model = nnx.eval_shape(lambda: WorldModel(cfg, rngs=nnx.Rngs(0)))  # shapes only: nothing initialised
    g, params, rest = nnx.split(model, TRAINED, ...)

    def abstract_for(saved, where):
        diffs = config_diffs(saved, mine)
        if diffs:
            raise CheckpointError(f"{where} was trained with another PandoraConfig: fields {diffs} differ")
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(params))

    restored = restore_recorded_params(run_dir, "pandora", "Pandora", "Pandora stage", abstract_for, step)
    nnx.replace_by_pure_dict(params, jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored))
    nnx.replace_by_pure_dict(rest, random_llm(cfg))  # the seed-0 LLM (load_llm then puts pretrained weights in)
    model = nnx.merge(g, params, rest)
    return load_llm(model) if pretrained_llm else model


def random_llm(cfg: PandoraConfig, seed: int = 0) -> dict:
    """{"llm": ...} pure state of the LLM of WorldModel(cfg, rngs=Rngs(seed)) (built first, so its init alone)."""
    from jaxlm.models.decoder import DecoderLM

    if cfg.llm_weights is not None:  # overwritten by load_llm: zeros of the right shapes suffice
        st = nnx.eval_shape(lambda: nnx.state(DecoderLM(cfg.llm, rngs=nnx.Rngs(seed))))
        return {"llm": jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), nnx.to_pure_dict(st))}
    return {"llm": jax.jit(lambda: nnx.to_pure_dict(nnx.state(DecoderLM(cfg.llm, rngs=nnx.Rngs(seed)))))()}


__all__ = ["PandoraTask", "STAGES", "STAGE_TRAINABLE", "TRAINED", "stage_loss", "stage_phase", "stage_phases",
           "load_world_model",
           "batch_spec_of", "align_normalizer"]
