"""DiLED on the shared engine: `DiLEDTask` (build / loss / eval_loss / batch_spec for jaxlm.train.train) and
`load_diled(run_dir)` (a trained model back from a run's latest checkpoint, checked against the config)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.models.diled.model import DiLED, DiLEDConfig, diled_loss
from jaxlm.train.task import Task


def batch_spec_of(cfg: DiLEDConfig) -> dict:
    if cfg.modality == "image":
        return {"image": ("batch", None, None, None)}
    spec = {"tokens": ("batch", None)}
    if cfg.modality == "protein":
        spec["fitness"] = ("batch",)
    return spec


class DiLEDTask(Task):
    """The joint DiLED objective (`diled_loss`) as an engine Task. loss_sum = B · total (the original's batch
    mean), weight = B; metrics are batch sums (rec, ddpm[, fitness_mse]) divided by the weight in the log.
    eval_loss: the held-out reconstruction term from μ (no sampling noise), per example."""

    name = "diled"

    def __init__(self, cfg: DiLEDConfig, init=None):
        self.cfg = cfg
        self.batch_spec = batch_spec_of(cfg)
        self._init = init  # a DiLED module to start from (e.g. the two-stage baseline's trained autoencoder)

    def pretrained(self):
        return self._init

    @property
    def step_key(self):
        return ("diled", self.cfg)

    def build(self, rngs):
        return DiLED(self.cfg, rngs=rngs)

    def loss(self, model, batch, rng):
        total, m = diled_loss(model, batch, rng)
        B = jnp.float32(next(iter(batch.values())).shape[0])
        return total * B, B, {k: v * B for k, v in m.items()}

    def eval_loss(self, model, batch):
        mu = model.encode(batch)
        rec = model.ae.rec_loss(mu, batch)
        return rec.sum(), jnp.float32(rec.shape[0])

    def step_metrics(self, sums, weight):
        return {k: v / jnp.maximum(weight, 1.0) for k, v in sums.items()}

    def log_metrics(self, m):
        return {k: float(m[k]) for k in ("rec", "ddpm", "fitness_mse", "kl") if k in m}

    def compat(self, run_cfg):
        from jaxlm.train.config import to_dict

        t = run_cfg.train
        return {"model": {"diled": to_dict(self.cfg)},
                "data": {"global_batch": t.global_batch, "data_seed": t.data_seed, "modality": self.cfg.modality,
                         "latent_dim": self.cfg.latent_dim}}


def load_diled(run_dir, cfg: DiLEDConfig | None = None, step: int | None = None) -> DiLED:
    """The model of a recipes.diled / train(DiLEDTask) run at its latest (or `step`) checkpoint. With `cfg`, a
    config that disagrees with the checkpoint's (modality, latent size, ...) raises CheckpointError naming it."""
    from jaxlm.train.checkpoint import restore_recorded_params
    from jaxlm.train.config import to_dict

    built = {}

    def abstract_for(saved, where):
        c = cfg if cfg is not None else config_from_dict(saved)
        if to_dict(c) != saved:
            diffs = _diff(saved, to_dict(c))
            raise CheckpointError(f"{where} does not match the given DiLED config: " + "; ".join(diffs))
        built["split"] = nnx.split(DiLED(c, rngs=nnx.Rngs(0)), nnx.Param, ...)
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(built["split"][1]))

    restored = restore_recorded_params(run_dir, "diled", "DiLED", "recipes.diled", abstract_for, step)
    g, params, rest = built["split"]
    nnx.replace_by_pure_dict(params, jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored))
    model = nnx.merge(g, params, rest)
    if model.cfg.modality == "text":   # the corpus BPE rebuilt here must be the one saved with the run
        from jaxlm.models.diled.data import check_saved_codec

        check_saved_codec(model.cfg.ae, run_dir)
    return model


def _diff(a, b, prefix="") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: checkpoint has {x!r}, given {y!r}")
    return out


def config_from_dict(d: dict) -> DiLEDConfig:
    """Inverse of to_dict(DiLEDConfig)."""
    from jaxlm.config import DecoderConfig
    from jaxlm.models.diled.autoencoders import ImageAEConfig, ProteinAEConfig, TextAEConfig
    from jaxlm.models.diled.denoiser import MLPSkipNetConfig
    from jaxlm.models.diled.objective import DiLEDLossConfig

    mod = d.get("modality")
    ae = dict(d["ae"])
    if mod == "text":
        ae = TextAEConfig(**{**ae, "encoder": DecoderConfig(**ae["encoder"]), "decoder": DecoderConfig(**ae["decoder"])})
    elif mod == "protein":
        ae = ProteinAEConfig(**{**ae, "encoder": DecoderConfig(**ae["encoder"])})
    elif mod == "image":
        ae = ImageAEConfig(**ae)
    else:
        raise ConfigError(f"modality={mod!r} in the checkpoint's config: expected text, image or protein")
    return DiLEDConfig(mod, ae, MLPSkipNetConfig(**d["denoiser"]), DiLEDLossConfig(**d["loss"]),
                       joint_regressor=d.get("joint_regressor", False), objective=d.get("objective", "diled"),
                       kl_weight=d.get("kl_weight", 1.0))


def save_config(cfg: DiLEDConfig, path) -> None:
    from jaxlm.train.config import to_dict

    Path(path).write_text(json.dumps(to_dict(cfg), indent=2))


__all__ = ["DiLEDTask", "load_diled", "config_from_dict", "batch_spec_of"]
