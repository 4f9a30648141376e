"""A LLaVA-1.5-style multimodal LM: a ViT image encoder, a 2-layer GELU projector (`mlp2x_gelu`) and any jaxlm
decoder; the projected patch features replace the `<image>` tag of the chat-rendered prompt, as LLaVA splices them
(`splice_image`; image_pos=None puts them first, as `prefix_embeds`).

    model = MLLM(MLLMConfig(vit_preset("vit-tiny"), preset("smollm2-tiny")), rngs=nnx.Rngs(0))
    logits = model(images, input_ids, image_pos)  # images [B, H, W, C] in [-1, 1], ids [B, T] -> [B, N + T, V]
    mllm = with_pretrained(cfg_vision, llm=load_model()[0])   # SmolLM2-135M-Instruct as the LLM (the default)

Encoding LLaVA conversations, training on the shared engine (`MLLMTask`, the two LLaVA-1.5 stages as PhaseConfigs
`llava_phases`: stage 1 trains the projector only (`STAGE1_TRAINABLE`), stage 2 the projector and the LLM
(`STAGE2_TRAINABLE`); the vision tower stays frozen in both, as in LLaVA-1.5, or joins stage 1 when trained from
scratch) and generation with images in the prompt (`MLLMGenerator`) live in `jaxlm.web.mllm`: models/ does not
import train/ or infer/.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import DecoderConfig, ViTConfig
from jaxlm.errors import ConfigError
from jaxlm.models.decoder import DecoderLM
from jaxlm.models.vit import ViT
from jaxlm.nn import Linear

# PhaseConfig.trainable patterns ('/'-joined parameter paths)
STAGE1_TRAINABLE = ("^projector/",)
STAGE2_TRAINABLE = ("^projector/", "^llm/")
VISION_TRAINABLE = ("^vision/",)
IMAGE_TAG = "<image>"  # LLaVA's DEFAULT_IMAGE_TOKEN: where the image tokens go in the prompt

# LLaVA-1.5 (scripts/v1_5/pretrain.sh, finetune_crystal_chat.sh): AdamW, weight decay 0, cosine, warmup 3%
LLAVA_STAGES = {"stage1": {"lr": 1e-3, "global_batch": 256, "warmup_ratio": 0.03},
                "stage2": {"lr": 2e-5, "global_batch": 128, "warmup_ratio": 0.03}}


@dataclass(frozen=True)
class MLLMConfig:
    vision: ViTConfig
    llm: DecoderConfig
    projector: str = "mlp2x_gelu"

    def __post_init__(self):
        if self.projector != "mlp2x_gelu":
            raise ConfigError(f"MLLMConfig.projector={self.projector!r}: only 'mlp2x_gelu' (LLaVA-1.5) is built")

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_patches

    def replace(self, **kw) -> "MLLMConfig":
        return dataclasses.replace(self, **kw)


class Projector(nnx.Module):
    """mlp2x_gelu: Linear(vision, llm) -> GELU (exact) -> Linear(llm, llm), with biases. Weights start at std
    fan_in ** -0.5 (torch Linear's scale), so the image tokens enter the LLM at an O(1) RMS: a prefix much smaller
    than that makes the LLM's first RMSNorm amplify every update of the projector (loss spikes in stage 1)."""

    def __init__(self, d_in: int, d_out: int, *, dtype="float32", param_dtype="float32", rngs: nnx.Rngs):
        kw = dict(bias=True, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype), rngs=rngs)
        self.fc1 = Linear(d_in, d_out, (None, "mlp"), std=d_in ** -0.5, **kw)
        self.fc2 = Linear(d_out, d_out, ("mlp", "embed"), std=d_out ** -0.5, **kw)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class MLLM(nnx.Module):
    """vision -> projector -> llm (prefix_embeds). `llm` / `vision` may be given (pretrained modules)."""

    def __init__(self, cfg: MLLMConfig, *, rngs: nnx.Rngs, llm: DecoderLM | None = None, vision: ViT | None = None):
        self.cfg = cfg
        self.vision = vision if vision is not None else ViT(cfg.vision, rngs=rngs)
        self.projector = Projector(cfg.vision.hidden_size, cfg.llm.hidden_size, dtype=cfg.llm.dtype, param_dtype=cfg.llm.param_dtype, rngs=rngs)
        self.llm = llm if llm is not None else DecoderLM(cfg.llm, rngs=rngs)

    def image_embeds(self, images):
        """images [B, H, W, C] in [-1, 1] -> LLM input embeddings [B, N, D_llm]."""
        return self.projector(self.vision(images))

    def __call__(self, images, input_ids, image_pos=None):
        """-> logits [B, N + T, V] (N = image tokens; images=None: text only, [B, T, V]). image_pos [B]: row b's
        image tokens go between input_ids[b, :p] and input_ids[b, p:] (where the `<image>` tag was); None: first."""
        if images is None:
            return self.llm(input_ids)
        img = self.image_embeds(images)
        if image_pos is None:
            return self.llm(input_ids, prefix_embeds=img)
        return self.llm(embeds=splice_image(self.llm.embed_tokens(input_ids), img, image_pos))


def splice_image(tok_embeds, img_embeds, image_pos):
    """Row b: tok_embeds[b, :p], img_embeds[b], tok_embeds[b, p:] with p = image_pos[b] (LLaVA's splice at the
    `<image>` tag). [B, T, D], [B, N, D], [B] int -> [B, T + N, D]."""
    B, T, _ = tok_embeds.shape
    N = img_embeds.shape[1]
    j = jnp.arange(T + N, dtype=jnp.int32)[None, :]
    p = jnp.asarray(image_pos, jnp.int32)[:, None]
    tok = jnp.take_along_axis(tok_embeds, jnp.clip(jnp.where(j < p, j, j - N), 0, T - 1)[..., None], axis=1)
    img = jnp.take_along_axis(img_embeds, jnp.clip(j - p, 0, N - 1)[..., None], axis=1)
    return jnp.where(((j >= p) & (j < p + N))[..., None], img.astype(tok.dtype), tok)


def splice_targets(targets, image_pos, num_image_tokens: int):
    """Next-token targets [B, T] of the text -> targets [B, T + N] of the spliced sequence: -1 at the positions whose
    next input is an image token (p - 1 .. p + N - 2: the image is never a target), the text's targets after the
    image shifted by N. The pairs (logit position, target) are those of the text with the image left out."""
    B, T = targets.shape
    N = int(num_image_tokens)
    j = jnp.arange(T + N, dtype=jnp.int32)[None, :]
    p = jnp.asarray(image_pos, jnp.int32)[:, None]
    src = jnp.where(j < p - 1, j, j - N)
    valid = ((j < p - 1) | (j >= p + N - 1)) & (src >= 0)
    out = jnp.take_along_axis(targets, jnp.clip(src, 0, T - 1), axis=1)
    return jnp.where(valid, out, -1)


def with_pretrained(vision_cfg: ViTConfig, llm: DecoderLM, *, vision: ViT | None = None, seed: int = 0) -> MLLM:
    """An MLLM around a loaded LLM (e.g. `jaxlm.load_model()`'s SmolLM2-135M-Instruct) and optionally a loaded
    vision tower (`jaxlm.io.clip_hf.load_clip_vision`); the projector is freshly initialised."""
    vcfg = vision.cfg if vision is not None else vision_cfg
    return MLLM(MLLMConfig(vcfg, llm.cfg), rngs=nnx.Rngs(seed), llm=llm, vision=vision)


# ----------------------------------------------------------------------------- data
# ----------------------------------------------------------------------------- inference
def _embed(graphdef, state, images):
    return nnx.merge(graphdef, state).image_embeds(images)


embed_images = jax.jit(_embed, static_argnums=0)


def _tokens(graphdef, state, ids):
    return nnx.merge(graphdef, state).llm.embed_tokens(ids)


embed_prompt_tokens = jax.jit(_tokens, static_argnums=0)  # the LLM's input embeddings of token ids [B, T]


__all__ = ["MLLM", "MLLMConfig", "Projector", "STAGE1_TRAINABLE", "STAGE2_TRAINABLE", "VISION_TRAINABLE",
           "LLAVA_STAGES", "IMAGE_TAG", "embed_images", "embed_prompt_tokens", "splice_image", "splice_targets",
           "with_pretrained"]
