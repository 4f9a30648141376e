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

`jaxlm.io.clip_hf.load_clip_vision(dir)` reads a local transformers `CLIPVisionModel` (or full `CLIPModel`) directory — config.json +
safetensors — into a ViT with the original key names (strict: missing / mis-shaped keys raise CheckpointError).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import ViTConfig, vit_preset
from jaxlm.errors import ConfigError, ShapeError
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


__all__ = ["ViT", "ViTBlock", "ViTConfig", "ViTMLP", "patchify", "sincos_2d", "vit_preset"]


def _forward(graphdef, state, images):
    return nnx.merge(graphdef, state)(images)


forward = jax.jit(_forward, static_argnums=0)
"""forward(graphdef, state, images) -> [B, N, D]: the jitted pure entry point (graphdef from nnx.split(vit))."""
