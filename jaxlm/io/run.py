"""Reading a training run's orbax checkpoints for inference and export, without the training stack.

Layout (written by jaxlm.train.checkpoint.Checkpointer): `<run>/checkpoints/<step>/` (or `<run>/<step>/`), each
step with the items `params` (the float32 master weights, a pure nested dict), `train`, `data` and `meta` (JSON;
`meta["compat"]["model"]` is the model config). Only `params` and `meta` are read here, onto one device (or onto
`shardings`), so any checkpoint restores on any topology.
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxlm.errors import CheckpointError

ITEMS = ("params", "train", "data", "meta")


def checkpoint_dir(run_dir) -> Path:
    """Where a run's step folders are: <run>/checkpoints if present, else <run> itself."""
    p = Path(run_dir)
    return p / "checkpoints" if (p / "checkpoints").is_dir() else p


def is_run_dir(path) -> bool:
    """Whether `path` looks like an orbax training run (numbered step folders)."""
    d = checkpoint_dir(path)
    return d.is_dir() and any(c.name.isdigit() and c.is_dir() for c in d.iterdir())


def _manager(d: Path):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(read_only=True, create=False, enable_async_checkpointing=False)
    return ocp.CheckpointManager(d.absolute(), options=opts, item_names=ITEMS)


def _model_class(cfg):
    from jaxlm.config import DecoderConfig

    if isinstance(cfg, DecoderConfig):
        from jaxlm.models.decoder import DecoderLM

        return DecoderLM
    raise CheckpointError(f"cannot rebuild a model for config type {type(cfg).__name__}")


def restore_run(run_dir, step: int | None = None, *, shardings=None):
    """-> (model, cfg, step): the run's checkpoint `step` (default: the latest), float32 master weights."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from jaxlm.config import DecoderConfig

    d = checkpoint_dir(run_dir)
    mgr = _manager(d)
    try:
        steps = sorted(mgr.all_steps())
        if not steps:
            raise CheckpointError(f"no checkpoints under {d} (expected numbered step folders written by jaxlm.train)")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} under {d}; have {steps}")
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        try:
            cfg = DecoderConfig(**meta["compat"]["model"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{d}/{step}: meta has no usable compat.model config ({e})") from None
        cls = _model_class(cfg)
        abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
        graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=dev), nnx.to_pure_dict(params))
        try:
            out = mgr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{d}/{step}: params do not match the config in its meta ({e})") from e
    finally:
        mgr.close()
    model = nnx.merge(graphdef, nnx.State(out), rest)
    if shardings is not None:
        nnx.update(model, jax.device_put(nnx.state(model), shardings))
    return model, cfg, step


def export_hf(run_dir, out_dir, step: int | None = None, tokenizer=None) -> Path:
    """Write any checkpoint of a run as a Hugging Face model directory (config.json + safetensors), with the
    tokenizer's files when it can save them (a jaxlm.io.tokenizer.Tokenizer)."""
    from jaxlm.io.hf import save_pretrained

    model, _cfg, step = restore_run(run_dir, step)
    savable = tokenizer if callable(getattr(tokenizer, "save", None)) else None
    out = Path(save_pretrained(model, out_dir, tokenizer=savable))
    (out / "jaxlm_checkpoint.json").write_text(json.dumps({"run": str(Path(run_dir)), "step": step}))
    return out


__all__ = ["restore_run", "export_hf", "is_run_dir", "checkpoint_dir"]
