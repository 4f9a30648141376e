"""Per-family checkpoint layouts: HF key names, weight orientation and config.json fields.

Each family is data: a list of `Rule`s mapping our parameter paths to the ORIGINAL HF key names, plus
functions converting config.json <-> DecoderConfig. The generic machinery lives in jaxlm/io/hf.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jaxlm.config import DecoderConfig, add_family_name
from jaxlm.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]      # our parameter path(s); several = fused along `axis` in the HF tensor (q|k|v)
    hf: str                    # HF key; "{i}" = layer index for stacked parameters
    transpose: bool = False    # torch nn.Linear [out, in] <-> our kernel [in, out]
    axis: int = -1             # split axis for fused tensors (in OUR orientation)
    shared: bool = False       # one parameter of ours stored under every layer's key (MobiLlama's FFN)
    optional: bool = False     # may be absent (e.g. CrystalCoder's duplicate lm_head.weight)
    alias_of: str | None = None  # tied duplicate: must equal this of ours on import
    write: bool = True         # written on export (CrystalCoder writes its duplicate lm_head.weight; Llama/Phi don't)

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf and not self.shared


# --------------------------------------------------------------------------- llama / mobillama (HF Llama names)
def _llama_rules(cfg: DecoderConfig) -> list[Rule]:
    L = "model.layers.{i}."
    r = [Rule(("embed",), "model.embed_tokens.weight"),
         Rule(("layers.attn_norm.scale",), L + "input_layernorm.weight"),
         Rule(("layers.mlp_norm.scale",), L + "post_attention_layernorm.weight"),
         Rule(("final_norm.scale",), "model.norm.weight")]
    for ours, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
        r.append(Rule((f"layers.attn.{ours}.kernel",), L + f"self_attn.{hf}.weight", transpose=True))
        if (cfg.qkv_bias and ours != "o") or (cfg.out_bias and ours == "o"):
            r.append(Rule((f"layers.attn.{ours}.bias",), L + f"self_attn.{hf}.bias"))
    mlp = "shared_mlp." if cfg.shared_mlp else "layers.mlp."
    for ours, hf in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        r.append(Rule((mlp + ours + ".kernel",), L + f"mlp.{hf}.weight", transpose=True, shared=cfg.shared_mlp))
        if cfg.mlp_bias:
            r.append(Rule((mlp + ours + ".bias",), L + f"mlp.{hf}.bias", shared=cfg.shared_mlp))
    if cfg.tie_embeddings:
        r.append(Rule(("embed",), "lm_head.weight", optional=True, alias_of="embed", write=False))
    else:
        r.append(Rule(("lm_head.kernel",), "lm_head.weight", transpose=True))
    return r


def _llama_from_hf(c: dict, family: str = "llama") -> DecoderConfig:
    heads = int(c["num_attention_heads"])
    head_dim = int(c.get("head_dim") or c["hidden_size"] // heads)
    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling")
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        raise ConfigError(f"config.json rope_scaling={scaling}: only unscaled RoPE is supported")
    if rope and rope.get("rope_type", "default") != "default":
        raise ConfigError(f"config.json rope_parameters={rope}: only unscaled RoPE is supported")
    if c.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"config.json hidden_act={c.get('hidden_act')!r}: the Llama family uses 'silu'")
    return DecoderConfig(
        family=family, vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
        num_layers=int(c["num_hidden_layers"]), num_heads=heads,
        # MobiLlama's attention ignores num_key_value_heads: k/v are full multi-head projections
        num_kv_heads=heads if family == "mobillama" else int(c.get("num_key_value_heads") or heads),
        head_dim=head_dim, intermediate_size=int(c["intermediate_size"]),
        max_position_embeddings=int(c.get("max_position_embeddings", 2048)), norm="rms",
        norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        qkv_bias=bool(c.get("attention_bias", False)), out_bias=bool(c.get("attention_bias", False)),
        mlp_bias=bool(c.get("mlp_bias", False)), tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        bos_token_id=c.get("bos_token_id"), eos_token_id=_first(c.get("eos_token_id")),
        shared_mlp=family == "mobillama")


def _llama_to_hf(cfg: DecoderConfig) -> dict:
    out = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "attention_bias": cfg.qkv_bias, "mlp_bias": cfg.mlp_bias,
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id, "torch_dtype": "float32",
    }
    if cfg.family == "mobillama":
        out["jaxlm_family"] = "mobillama"
        out["jaxlm_shared_mlp"] = cfg.shared_mlp
    return out


def _llama_check(cfg: DecoderConfig):
    if cfg.qkv_bias != cfg.out_bias:
        raise ConfigError("the HF Llama layout has one attention_bias flag: qkv_bias and out_bias must agree")
    if cfg.block != "sequential" or cfg.norm != "rms" or cfg.mlp != "swiglu":
        raise ConfigError(f"family={cfg.family!r} needs block=sequential, norm=rms, mlp=swiglu")


# --------------------------------------------------------------------------- phi (HF PhiForCausalLM)
def _phi_rules(cfg: DecoderConfig) -> list[Rule]:
    L = "model.layers.{i}."
    r = [Rule(("embed",), "model.embed_tokens.weight"),
         Rule(("layers.attn_norm.scale",), L + "input_layernorm.weight"),
         Rule(("layers.attn_norm.bias",), L + "input_layernorm.bias"),
         Rule(("final_norm.scale",), "model.final_layernorm.weight"),
         Rule(("final_norm.bias",), "model.final_layernorm.bias")]
    for ours, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "dense")):
        r += [Rule((f"layers.attn.{ours}.kernel",), L + f"self_attn.{hf}.weight", transpose=True),
              Rule((f"layers.attn.{ours}.bias",), L + f"self_attn.{hf}.bias")]
    for ours, hf in (("up", "fc1"), ("down", "fc2")):
        r += [Rule((f"layers.mlp.{ours}.kernel",), L + f"mlp.{hf}.weight", transpose=True),
              Rule((f"layers.mlp.{ours}.bias",), L + f"mlp.{hf}.bias")]
    if cfg.tie_embeddings:
        r.append(Rule(("embed",), "lm_head.weight", optional=True, alias_of="embed", write=False))
    else:
        r.append(Rule(("lm_head.kernel",), "lm_head.weight", transpose=True))
        r.append(Rule(("lm_head.bias",), "lm_head.bias"))
    return r


def _phi_from_hf(c: dict, family: str = "phi") -> DecoderConfig:
    if c.get("qk_layernorm"):
        raise ConfigError("config.json qk_layernorm=true is not supported for Phi")
    heads = int(c["num_attention_heads"])
    head_dim = c["hidden_size"] // heads
    rope = c.get("rope_parameters") or {}
    factor = float(rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.5)))
    if c.get("hidden_act", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(f"config.json hidden_act={c.get('hidden_act')!r}: Phi needs the tanh GELU ('gelu_new')")
    return DecoderConfig(
        family="phi", vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
        num_layers=int(c["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(c.get("num_key_value_heads") or heads), head_dim=head_dim,
        intermediate_size=int(c["intermediate_size"]), max_position_embeddings=int(c.get("max_position_embeddings", 2048)),
        norm="layer", norm_eps=float(c.get("layer_norm_eps", 1e-5)), block="parallel", mlp="gelu", mlp_bias=True,
        qkv_bias=True, out_bias=True, rotary_dim=int(head_dim * factor), rope_style="half",
        rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)), lm_head_bias=True,
        bos_token_id=c.get("bos_token_id"), eos_token_id=_first(c.get("eos_token_id")))


def _phi_to_hf(cfg: DecoderConfig) -> dict:
    return {
        "architectures": ["PhiForCausalLM"], "model_type": "phi", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "hidden_act": "gelu_new",
        "max_position_embeddings": cfg.max_position_embeddings, "layer_norm_eps": cfg.norm_eps,
        "partial_rotary_factor": cfg.rot_dim / cfg.head_dim, "rope_theta": cfg.rope_theta,
        "qk_layernorm": False, "tie_word_embeddings": cfg.tie_embeddings, "resid_pdrop": 0.0,
        "embd_pdrop": 0.0, "attention_dropout": 0.0, "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id, "torch_dtype": "float32",
    }


def _phi_check(cfg: DecoderConfig):
    if not (cfg.block == "parallel" and cfg.norm == "layer" and cfg.mlp == "gelu" and cfg.qkv_bias and cfg.out_bias
            and cfg.mlp_bias and cfg.rope_style == "half" and cfg.head_dim * cfg.num_heads == cfg.hidden_size):
        raise ConfigError("family='phi' needs the Phi layout (parallel block, LayerNorm, GELU MLP, biases, half RoPE)")


# --------------------------------------------------------------------------- crystalcoder (GPT-2 style names)
def _crystal_rules(cfg: DecoderConfig) -> list[Rule]:
    L = "transformer.h.{i}."
    qkv = tuple(f"layers.attn.{n}.kernel" for n in "qkv")
    qkv_b = tuple(f"layers.attn.{n}.bias" for n in "qkv")
    r = [Rule(("embed",), "transformer.wte.weight"),
         Rule(("layers.attn_norm.scale",), L + "ln_1.weight"), Rule(("layers.attn_norm.bias",), L + "ln_1.bias"),
         Rule(qkv, L + "attn.c_attn.weight", axis=-1), Rule(qkv_b, L + "attn.c_attn.bias", axis=-1),
         Rule(("layers.attn.o.kernel",), L + "attn.c_proj.weight"), Rule(("layers.attn.o.bias",), L + "attn.c_proj.bias"),
         Rule(("layers.mlp_norm.scale",), L + "ln_2.weight"), Rule(("layers.mlp_norm.bias",), L + "ln_2.bias"),
         # SwiGLU: out = c_proj(c_fc(x) * silu(c_fc2(x))) -> the gate (silu branch) is c_fc2
         Rule(("layers.mlp.up.kernel",), L + "mlp.c_fc.weight"), Rule(("layers.mlp.up.bias",), L + "mlp.c_fc.bias"),
         Rule(("layers.mlp.gate.kernel",), L + "mlp.c_fc2.weight"), Rule(("layers.mlp.gate.bias",), L + "mlp.c_fc2.bias"),
         Rule(("layers.mlp.down.kernel",), L + "mlp.c_proj.weight"), Rule(("layers.mlp.down.bias",), L + "mlp.c_proj.bias"),
         Rule(("final_norm.scale",), "transformer.ln_f.weight"), Rule(("final_norm.bias",), "transformer.ln_f.bias")]
    if cfg.tie_embeddings:  # the released checkpoint stores both keys; we write both too
        r.append(Rule(("embed",), "lm_head.weight", optional=True, alias_of="embed"))
    else:
        r.append(Rule(("lm_head.kernel",), "lm_head.weight", transpose=True))
    return r


def _crystal_from_hf(c: dict, family: str = "crystalcoder") -> DecoderConfig:
    if c.get("activation_function", "swiglu") != "swiglu":
        raise ConfigError(f"config.json activation_function={c.get('activation_function')!r}: only 'swiglu' is supported")
    if c.get("position_embedding_type", "rotary") != "rotary":
        raise ConfigError(f"config.json position_embedding_type={c.get('position_embedding_type')!r}: only 'rotary'")
    if c.get("scale_attn_by_inverse_layer_idx") or c.get("reorder_and_upcast_attn"):
        raise ConfigError("config.json scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    d, h = int(c["n_embd"]), int(c["n_head"])
    if not c.get("scale_attn_weights", True):
        power = 0.0
    else:
        power = 1.0 if c.get("mup_scale_qk_dot_by_d", False) else 0.5
    return DecoderConfig(
        family="crystalcoder", vocab_size=int(c["vocab_size"]), hidden_size=d, num_layers=int(c["n_layer"]),
        num_heads=h, num_kv_heads=h, head_dim=d // h, intermediate_size=int(c.get("n_inner") or 4 * d),
        max_position_embeddings=int(c.get("n_positions", 2048)), norm="layer",
        norm_eps=float(c.get("layer_norm_epsilon", 1e-5)), mlp="swiglu", mlp_bias=True, qkv_bias=True,
        out_bias=True, rotary_dim=int(c.get("rotary_dim") or d // h), rope_style="interleaved",
        attn_scale_power=power, embed_scale=float(c.get("mup_embeddings_scale") or 1.0),
        logit_scale=float(c.get("mup_output_alpha") or 1.0) * float(c.get("mup_width_scale") or 1.0),
        tie_embeddings=bool(c.get("tie_word_embeddings", True)), bos_token_id=c.get("bos_token_id"),
        eos_token_id=_first(c.get("eos_token_id")))


def _crystal_to_hf(cfg: DecoderConfig) -> dict:
    # logit_scale = alpha * width_scale; write width_scale 0.0625 where it reproduces the released factoring
    width = 0.0625 if abs(cfg.logit_scale / 0.0625 - round(cfg.logit_scale / 0.0625, 6)) < 1e-9 else 1.0
    return {
        "architectures": ["CrystalCoderLMHeadModel"], "model_type": "crystalcoder",
        "auto_map": {"AutoConfig": "configuration_crystalcoder.CrystalCoderConfig",
                     "AutoModel": "modeling_crystalcoder.CrystalCoderModel",
                     "AutoModelForCausalLM": "modeling_crystalcoder.CrystalCoderLMHeadModel"},
        "vocab_size": cfg.vocab_size, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_size, "n_positions": cfg.max_position_embeddings,
        "activation_function": "swiglu", "layer_norm_epsilon": cfg.norm_eps, "position_embedding_type": "rotary",
        "rotary_dim": cfg.rot_dim, "scale_attn_weights": cfg.attn_scale_power != 0.0,
        "mup_scale_qk_dot_by_d": cfg.attn_scale_power == 1.0, "mup_embeddings_scale": cfg.embed_scale,
        "mup_output_alpha": cfg.logit_scale / width, "mup_width_scale": width,
        "tie_word_embeddings": cfg.tie_embeddings, "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "use_cache": True,
    }


def _crystal_check(cfg: DecoderConfig):
    if not (cfg.block == "sequential" and cfg.norm == "layer" and cfg.mlp == "swiglu" and cfg.qkv_bias
            and cfg.out_bias and cfg.mlp_bias and cfg.rope_style == "interleaved" and cfg.num_kv_heads == cfg.num_heads
            and cfg.attn_scale_power in (0.0, 0.5, 1.0)):
        raise ConfigError("family='crystalcoder' needs the CrystalCoder layout (LayerNorm, SwiGLU, biases, MHA, "
                          "interleaved RoPE)")


def _first(x):
    return x[0] if isinstance(x, list) and x else x


@dataclass(frozen=True)
class Family:
    name: str
    rules: object
    from_hf: object
    to_hf: object
    check: object
    ignore: tuple[str, ...] = ()   # regexes of buffers to skip on import


FAMILY_LAYOUTS: dict[str, Family] = {
    "llama": Family("llama", _llama_rules, _llama_from_hf, _llama_to_hf, _llama_check,
                    (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)),
    "mobillama": Family("mobillama", _llama_rules, lambda c, family="mobillama": _llama_from_hf(c, "mobillama"),
                        _llama_to_hf, _llama_check, (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)),
    "phi": Family("phi", _phi_rules, _phi_from_hf, _phi_to_hf, _phi_check,
                  (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)),
    "crystalcoder": Family("crystalcoder", _crystal_rules, _crystal_from_hf, _crystal_to_hf, _crystal_check,
                           (r"transformer\.h\.\d+\.attn\.bias", r"transformer\.h\.\d+\.attn\.masked_bias")),
}


# families added with register_family(...): (name, detect(hf_config) -> bool), consulted before the built-in rules
_DETECTORS: list = []


def register_family(family: Family, detect=None) -> Family:
    """Add a checkpoint layout (a new model family is data: a Family of key rules and config converters).

    `detect(hf_config: dict) -> bool` lets `load_pretrained` / `load_model` recognise the family's config.json;
    without it the family is chosen with `family=NAME`. Re-registering a name replaces it. See docs/architecture.md."""
    if not isinstance(family, Family):
        raise ConfigError(f"register_family: expected a jaxlm.io.families.Family, got {type(family).__name__}")
    FAMILY_LAYOUTS[family.name] = family
    add_family_name(family.name)
    _DETECTORS[:] = [(n, d) for n, d in _DETECTORS if n != family.name]
    if detect is not None:
        _DETECTORS.insert(0, (family.name, detect))
    return family


def detect_family(hf_config: dict, source: str = "config.json") -> str:
    if hf_config.get("jaxlm_family") in FAMILY_LAYOUTS:
        return hf_config["jaxlm_family"]
    for name, detect in _DETECTORS:
        if detect(hf_config):
            return name
    mt = hf_config.get("model_type")
    arch = " ".join(hf_config.get("architectures") or [])
    auto = str(hf_config.get("auto_map") or "").lower()
    if mt == "crystalcoder" or "CrystalCoder" in arch:
        return "crystalcoder"
    if mt == "phi" or "PhiForCausalLM" in arch:
        return "phi"
    if "mobillama" in auto or "MobiLlama" in arch:
        return "mobillama"
    if mt == "llama" or "LlamaForCausalLM" in arch:
        return "llama"
    raise ConfigError(f"{source}: cannot tell the model family from model_type={mt!r} architectures={arch!r}; "
                      f"pass family= one of {sorted(FAMILY_LAYOUTS)}")


def ignored(key: str, fam: Family) -> bool:
    return any(re.fullmatch(p, key) for p in fam.ignore)
