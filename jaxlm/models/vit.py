"""A ViT image encoder (NNX): patches -> pre-LN transformer blocks -> patch features [B, N, D].

    vit = ViT(vit_preset("vit-tiny"), rngs=nnx.Rngs(0))
    feats = vit(images)            # images [B, H, W, C] float in [-1, 1] -> [B, N, D], N = (H / patch) ** 2

- Patch embedding: a conv with stride = kernel = patch, written as a Linear over flattened (row, col, channel)
  patches (CLIP's conv has no bias; neither has ours).
- Positions: learned (CLIP) or fixed 2-D sin-cos (MAE); an optional class token (CLIP) is kept through the blocks
  and dropped from the output.
- Blocks: x + attn(ln1 x); x + mlp(ln2 x), bidirectional, q/k/v/o and MLP with biases; the blocks are stacked and
  run with lax.scan (compile time does not grow with depth). Attention is jaxlm.nn's CrossAttention used as
  self-attention (no rotary positions), the MLP jaxlm.nn's MLP with the configured activation.
- Output: the hidden state after layer `select_layer` (-1 the last; LLaVA-1.5 takes -2 of CLIP), then the optional
  `final_norm`. Pixels: images in [-1, 1] go to [0, 1], then (x - pixel_mean) / pixel_std (identity for the default
  mean = std = 0.5; CLIP's statistics in the CLIP presets).

`load_clip_vision(dir)` reads a local transformers `CLIPVisionModel` (or full `CLIPModel`) directory — config.json +
safetensors — into a ViT with the original key names (strict: missing / mis-shaped keys raise CheckpointError).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import ViTConfig, vit_preset
from jaxlm.errors import CheckpointError, ConfigError, ShapeError
from jaxlm.nn import MLP, CrossAttention, Linear, Norm, param
from jaxlm.nn.stack import stack_layers
from jaxlm.sharding import shard

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


class ViTMLP(MLP):
    """jaxlm.nn.MLP's up/down layers (with biases) around the configured activation."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg.hidden_size, cfg.intermediate_size, "gelu", bias=True, std=cfg.init_std,
                         dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.act = cfg.act

    def __call__(self, x):
        return self.down(ACTIVATIONS[self.act](self.up(x)))


class ViTBlock(nnx.Module):
    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        self.ln1 = Norm(cfg.hidden_size, "layer", cfg.norm_eps, param_dtype=pdt)
        self.attn = CrossAttention(cfg.hidden_size, cfg.num_heads, qkv_bias=True, out_bias=True,
                                   init_std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.ln2 = Norm(cfg.hidden_size, "layer", cfg.norm_eps, param_dtype=pdt)
        self.mlp = ViTMLP(cfg, rngs=rngs)

    def __call__(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h)
        x = x + self.mlp(self.ln2(x))
        return shard(x, ("batch", "length", "act_embed"))


def sincos_2d(grid: int, dim: int) -> np.ndarray:
    """[grid * grid, dim] fixed 2-D sin-cos positions (MAE): half the channels encode the row, half the column."""
    if dim % 4:
        raise ConfigError(f"ViTConfig: positions='sincos' needs hidden_size divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        a = pos[:, None] * omega[None]
        parts += [np.sin(a), np.cos(a)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def patchify(images, patch: int):
    """[B, H, W, C] -> [B, (H/p) * (W/p), p * p * C], patches in row-major order, each flattened (row, col, C)."""
    B, H, W, C = images.shape
    x = images.reshape(B, H // patch, patch, W // patch, patch, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // patch) * (W // patch), patch * patch * C)


class ViT(nnx.Module):
    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt, D = jnp.dtype(cfg.param_dtype), cfg.hidden_size
        self.patch_embed = Linear(cfg.patch_dim, D, (None, "embed"), std=cfg.init_std, dtype=jnp.dtype(cfg.dtype),
                                  param_dtype=pdt, rngs=rngs)
        self.cls = param(rngs, (D,), ("embed",), cfg.init_std, pdt) if cfg.cls_token else None
        n_pos = cfg.num_patches + int(cfg.cls_token)
        self.pos = param(rngs, (n_pos, D), (None, "embed"), cfg.init_std, pdt) if cfg.positions == "learned" else None
        self.pre_norm = Norm(D, "layer", cfg.norm_eps, param_dtype=pdt) if cfg.pre_norm else None
        self.layers = stack_layers(lambda r: ViTBlock(cfg, rngs=r), cfg.num_layers, rngs)
        self.final_norm = Norm(D, "layer", cfg.norm_eps, param_dtype=pdt) if cfg.final_norm else None

    @property
    def num_tokens(self) -> int:
        """Features per image (N)."""
        return self.cfg.num_patches

    def check_images(self, images):
        c = self.cfg
        want = (c.image_size, c.image_size, c.channels)
        s = tuple(getattr(images, "shape", ()))
        if len(s) != 4 or s[1:] != want:
            raise ShapeError(f"ViT: images have shape {s}; expected [B, {want[0]}, {want[1]}, {want[2]}] "
                             f"(image_size={c.image_size}, channels={c.channels}; values in [-1, 1])")

    def __call__(self, images):
        """images [B, H, W, C] float in [-1, 1] -> patch features [B, N, D]."""
        self.check_images(images)
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        x = (jnp.asarray(images, jnp.float32) + 1.0) / 2.0
        x = (x - jnp.asarray(c.pixel_mean, jnp.float32)) / jnp.asarray(c.pixel_std, jnp.float32)
        h = self.patch_embed(patchify(x.astype(dt), c.patch_size))
        B = h.shape[0]
        if self.cls is not None:
            h = jnp.concatenate([jnp.broadcast_to(self.cls[...].astype(dt), (B, 1, c.hidden_size)), h], axis=1)
        if self.pos is not None:
            h = h + self.pos[...].astype(dt)[None]
        else:
            pos = sincos_2d(c.grid, c.hidden_size)
            if c.cls_token:
                pos = np.concatenate([np.zeros((1, c.hidden_size), np.float32), pos])
            h = h + jnp.asarray(pos, dt)[None]
        if self.pre_norm is not None:
            h = self.pre_norm(h)
        h = shard(h, ("batch", "length", "act_embed"))
        gdef, lstate = nnx.split(self.layers)
        n_run = c.num_layers + 1 + c.select_layer
        if n_run < c.num_layers:  # layers after select_layer are never computed
            lstate = jax.tree.map(lambda a: a[:n_run], lstate)

        def body(x, st):
            return nnx.merge(gdef, st)(x), None

        h, _ = jax.lax.scan(body, h, lstate)
        if c.cls_token:
            h = h[:, 1:]
        if self.final_norm is not None:
            h = self.final_norm(h)
        return h


# ----------------------------------------------------------------------------- CLIP vision tower import
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
    from jaxlm.io.mamba_hf import _abstract, _open_store, _read_config, import_tensors

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


__all__ = ["ViT", "ViTBlock", "ViTConfig", "ViTMLP", "clip_table", "clip_vision_config", "load_clip_vision",
           "patchify", "sincos_2d", "vit_preset"]


def _forward(graphdef, state, images):
    return nnx.merge(graphdef, state)(images)


forward = jax.jit(_forward, static_argnums=0)
"""forward(graphdef, state, images) -> [B, N, D]: the jitted pure entry point (graphdef from nnx.split(vit))."""
