"""Importing a local Hugging Face CLIP vision tower into jaxlm's ViT (`jaxlm.models.vit`).

`load_clip_vision(dir)` reads a transformers `CLIPVisionModel` (or full `CLIPModel`) directory — config.json +
safetensors — with the original key names; strict: missing / mis-shaped keys raise CheckpointError.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flax import nnx

from jaxlm.config import ViTConfig, vit_preset
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.io.mamba_hf import _abstract, _open_store, _read_config, import_tensors
from jaxlm.models.vit import ViT

_CLIP_BLOCK = (  # (HF suffix under encoder.layers.{i}., our path under ViTBlock, layout)
    ("self_attn.q_proj.weight", "attn.q.kernel", "linear"), ("self_attn.q_proj.bias", "attn.q.bias", "copy"),
    ("self_attn.k_proj.weight", "attn.k.kernel", "linear"), ("self_attn.k_proj.bias", "attn.k.bias", "copy"),
    ("self_attn.v_proj.weight", "attn.v.kernel", "linear"), ("self_attn.v_proj.bias", "attn.v.bias", "copy"),
    ("self_attn.out_proj.weight", "attn.o.kernel", "linear"), ("self_attn.out_proj.bias", "attn.o.bias", "copy"),
    ("layer_norm1.weight", "ln1.scale", "copy"), ("layer_norm1.bias", "ln1.bias", "copy"),
    ("mlp.fc1.weight", "mlp.up.kernel", "linear"), ("mlp.fc1.bias", "mlp.up.bias", "copy"),
    ("mlp.fc2.weight", "mlp.down.kernel", "linear"), ("mlp.fc2.bias", "mlp.down.bias", "copy"),
    ("layer_norm2.weight", "ln2.scale", "copy"), ("layer_norm2.bias", "ln2.bias", "copy"),
)
_CLIP_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def _attr(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def clip_vision_config(conf: dict, source: str = "config.json", **overrides) -> ViTConfig:
    """A ViTConfig from a CLIPVisionModel config.json (or a CLIPModel one: its `vision_config`), LLaVA-1.5's feature
    choice by default (select_layer=-2, patch tokens, no final norm)."""
    v = conf.get("vision_config", conf)
    act = v.get("hidden_act", "quick_gelu")
    if act not in _CLIP_ACTS:
        raise ConfigError(f"{source}: hidden_act={act!r} is not supported (known: {sorted(_CLIP_ACTS)})")
    try:
        kw = dict(image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
                  channels=int(v.get("num_channels", 3)), hidden_size=int(v["hidden_size"]),
                  num_layers=int(v["num_hidden_layers"]), num_heads=int(v["num_attention_heads"]),
                  intermediate_size=int(v["intermediate_size"]), norm_eps=float(v.get("layer_norm_eps", 1e-5)),
                  act=_CLIP_ACTS[act])
    except KeyError as e:
        raise CheckpointError(f"{source}: CLIP vision config has no {e.args[0]!r}") from None
    base = vit_preset("clip-vit-l-336")
    return base.replace(**{**kw, **overrides})


def clip_table(model: ViT, prefix: str = "vision_model."):
    """(hf_key, param, layer index, layout) for every parameter of a CLIP-shaped ViT."""
    table = [(prefix + "embeddings.patch_embedding.weight", model.patch_embed.kernel, None, "linear"),
             (prefix + "embeddings.class_embedding", model.cls, None, "copy"),
             (prefix + "embeddings.position_embedding.weight", model.pos, None, "copy"),
             (prefix + "pre_layrnorm.weight", model.pre_norm.scale, None, "copy"),
             (prefix + "pre_layrnorm.bias", model.pre_norm.bias, None, "copy")]
    for i in range(model.cfg.num_layers):
        table += [(f"{prefix}encoder.layers.{i}.{k}", _attr(model.layers, a), i, lay) for k, a, lay in _CLIP_BLOCK]
    return table


def load_clip_vision(path: str | os.PathLike, **overrides) -> tuple[ViT, ViTConfig]:
    """A local HF CLIP vision tower (CLIPVisionModel or CLIPModel dir: config.json + safetensors) -> (ViT, ViTConfig).
    The conv patch weight [D, C, p, p] becomes our (row, col, channel) patch kernel; the text tower, projections and
    post_layernorm (unused by LLaVA's features) are ignored; every key under embeddings / pre_layrnorm / encoder must
    be used. `overrides` replace ViTConfig fields (e.g. select_layer=-1)."""
    cfg_path, conf = _read_config(path)
    cfg = clip_vision_config(conf, str(cfg_path), **overrides)
    if not (cfg.cls_token and cfg.pre_norm and cfg.positions == "learned"):
        raise ConfigError("load_clip_vision: CLIP needs cls_token=True, pre_norm=True, positions='learned'")
    d = Path(cfg_path).parent
    store = _open_store(path if Path(path).is_file() else d)
    keys = list(store.keys())
    # transformers 4 writes CLIPVisionModel / CLIPModel keys under 'vision_model.'; transformers 5 CLIPVisionModel
    # without it
    prefix = next((p for p in ("vision_model.", "") if p + "embeddings.patch_embedding.weight" in keys), None)
    if prefix is None:
        raise CheckpointError(f"{d}: no 'vision_model.embeddings.patch_embedding.weight' (not a CLIP vision "
                              f"checkpoint)")
    roots = tuple(prefix + r for r in ("embeddings.", "pre_layrnorm.", "encoder."))
    tensors = {k: np.asarray(store[k]) for k in keys if k.startswith(roots) and not k.endswith("position_ids")}
    model = _abstract(lambda: ViT(cfg, rngs=nnx.Rngs(0)))
    table = clip_table(model, prefix)
    pk = prefix + "embeddings.patch_embedding.weight"
    w = tensors[pk]
    want = (cfg.hidden_size, cfg.channels, cfg.patch_size, cfg.patch_size)
    if w.shape != want:
        raise CheckpointError(f"{d}: key {pk!r} has shape {list(w.shape)}, expected {list(want)}")
    tensors[pk] = w.transpose(0, 2, 3, 1).reshape(cfg.hidden_size, cfg.patch_dim)  # [D, (row, col, C)]
    import_tensors(table, tensors, str(d))
    return model, cfg


__all__ = ["clip_table", "clip_vision_config", "load_clip_vision"]
