"""A LLaVA-1.5-style multimodal LM: a ViT image encoder, a 2-layer GELU projector (`mlp2x_gelu`) and any jaxlm
decoder; the projected patch features go before the prompt as `prefix_embeds`.

    model = MLLM(MLLMConfig(vit_preset("vit-tiny"), preset("smollm2-tiny")), rngs=nnx.Rngs(0))
    logits = model(images, input_ids)          # images [B, H, W, C] in [-1, 1], ids [B, T] -> [B, N + T, V]
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

    def __call__(self, images, input_ids):
        """-> logits [B, N + T, V] (N = image tokens; images=None: text only, [B, T, V])."""
        pre = None if images is None else self.image_embeds(images)
        return self.llm(input_ids, prefix_embeds=pre)


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


__all__ = ["MLLM", "MLLMConfig", "Projector", "STAGE1_TRAINABLE", "STAGE2_TRAINABLE", "VISION_TRAINABLE",
           "LLAVA_STAGES", "embed_images", "with_pretrained"]
