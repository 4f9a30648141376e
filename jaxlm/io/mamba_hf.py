"""Import / export of state-space checkpoints with their ORIGINAL key names.

- transformers `Mamba2ForCausalLM` (config.json with model_type "mamba2" + safetensors):
  `load_mamba2(dir) -> (Mamba2LM, Mamba2Config)`, `save_mamba2(model, dir)` (loads in transformers).
- goombalab/phi-mamba `LMHeadModel` (nested config.json: LanguageModel / MixerModel / Block1 + safetensors):
  `load_phi_mamba(dir) -> (PhiMambaLM, PhiMambaConfig)`, `save_phi_mamba(model, dir)`.

Every missing, unexpected or mis-shaped key raises `CheckpointError` naming the key, the file and the shapes.
Layouts: torch Linear weight [out, in] <-> our kernel [in, out]; torch depthwise Conv1d weight [C, 1, K] <-> our
conv_weight [K, C].
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxlm.errors import CheckpointError, ConfigError

# ----------------------------------------------------------------------------------------------------------------
# generic key table machinery: entries (hf_key, param, layer index into a stacked param or None, layout)

_TO_HF = {"copy": lambda a: a, "linear": lambda a: a.T, "conv": lambda a: a.T[:, None, :]}
_FROM_HF = {"copy": lambda a: a, "linear": lambda a: a.T, "conv": lambda a: a[:, 0, :].T}


_SHAPE_TO_HF = {"copy": lambda s: s, "linear": lambda s: s[::-1], "conv": lambda s: (s[1], 1, s[0])}


def _value(p, idx):
    a = np.asarray(p[...])
    return a if idx is None else a[idx]


def _meta(p, idx):
    """(shape, dtype) of a parameter (or of one layer of a stacked one); works on abstract (eval_shape) models."""
    v = p.get_value()
    return (tuple(v.shape) if idx is None else tuple(v.shape[1:])), np.dtype(v.dtype)


def export_tensors(table) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(_TO_HF[lay](_value(p, idx))) for k, p, idx, lay in table}


def import_tensors(table, store, source: str, ignore=()):
    """Assign every table entry from `store` (a TensorStore or dict of arrays); strict about missing / unexpected /
    mis-shaped keys (`ignore`: keys that may be present and are not used). The model may be abstract
    (`nnx.eval_shape`): every parameter in the table is then materialized from the checkpoint."""
    present = set(store.keys())
    expected = {k for k, *_ in table}
    missing = sorted(expected - present)
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                              f"({len(missing)} missing)")
    unexpected = sorted(present - expected - set(ignore))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key(s) {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} "
                              f"({len(unexpected)} unexpected)")
    staged: dict[int, tuple] = {}
    for k, p, idx, lay in table:
        shape, dtype = _meta(p, idx)
        want = tuple(_SHAPE_TO_HF[lay](shape))
        got = tuple(store.shape(k)) if hasattr(store, "shape") else tuple(np.shape(store[k]))
        if got != want:
            raise CheckpointError(f"{source}: key {k!r} has shape {list(got)}, expected {list(want)}")
        arr = _FROM_HF[lay](np.asarray(store[k])).astype(dtype)
        if idx is None:
            staged[id(p)] = (p, arr)
        else:
            if id(p) not in staged:
                full_shape = tuple(p.get_value().shape)
                staged[id(p)] = (p, np.zeros(full_shape, dtype))
            staged[id(p)][1][idx] = arr
    for p, arr in staged.values():
        p.set_value(jnp.asarray(arr))


def _abstract(make):
    """Build a model without computing its random init (the checkpoint provides every parameter)."""
    from flax import nnx

    return nnx.eval_shape(make)


def _write(tensors, out_dir, config: dict, max_shard_bytes=None):
    from jaxlm.io.safetensors_io import write_safetensors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return write_safetensors(tensors, out, max_shard_bytes)


def _read_config(path) -> tuple[Path, dict]:
    p = Path(path)
    cfg_path = p / "config.json" if p.is_dir() else p.parent / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"checkpoint not found: {cfg_path} does not exist")
    try:
        return cfg_path, json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from None


def _open_store(path):
    from jaxlm.io.safetensors_io import TensorStore

    return TensorStore.open(path)


# ----------------------------------------------------------------------------------------------------------------
# Mamba-2 (transformers Mamba2ForCausalLM)

def _json_float(v) -> float:
    """transformers 5 writes non-finite floats as {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    return float(v)


def _float_json(v: float):
    return v if math.isfinite(v) else {"__float__": "Infinity" if v > 0 else ("-Infinity" if v < 0 else "NaN")}


def mamba2_config_from_hf(d: dict, source: str = "config.json"):
    from jaxlm.models.mamba2 import Mamba2Config

    if d.get("model_type", "mamba2") != "mamba2":
        raise ConfigError(f"{source}: model_type={d.get('model_type')!r}, expected 'mamba2'")
    try:
        lim = d.get("time_step_limit", (0.0, float("inf")))
        return Mamba2Config(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
            num_heads=d["num_heads"], head_dim=d["head_dim"], state_size=d["state_size"], expand=d.get("expand", 2),
            n_groups=d.get("n_groups", 8), conv_kernel=d.get("conv_kernel", 4), chunk_size=d.get("chunk_size", 256),
            norm_eps=d.get("layer_norm_epsilon", 1e-5), use_bias=d.get("use_bias", False),
            use_conv_bias=d.get("use_conv_bias", True), hidden_act=d.get("hidden_act", "silu"),
            time_step_limit=(_json_float(lim[0]), _json_float(lim[1])),
            residual_in_fp32=d.get("residual_in_fp32", True),
            tie_embeddings=d.get("tie_word_embeddings", False), pad_token_id=d.get("pad_token_id"),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"))
    except KeyError as e:
        raise ConfigError(f"{source}: missing Mamba-2 config field {e.args[0]!r}") from None


def mamba2_config_to_hf(cfg) -> dict:
    return {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_heads": cfg.num_heads,
        "head_dim": cfg.head_dim, "state_size": cfg.state_size, "expand": cfg.expand, "n_groups": cfg.n_groups,
        "conv_kernel": cfg.conv_kernel, "chunk_size": cfg.chunk_size, "layer_norm_epsilon": cfg.norm_eps,
        "use_bias": cfg.use_bias, "use_conv_bias": cfg.use_conv_bias, "hidden_act": cfg.hidden_act,
        "time_step_limit": [_float_json(cfg.time_step_limit[0]), _float_json(cfg.time_step_limit[1])],
        "residual_in_fp32": cfg.residual_in_fp32, "tie_word_embeddings": cfg.tie_embeddings,
        "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "torch_dtype": "float32",
    }


def mamba2_table(model):
    cfg = model.cfg
    L = model.layers
    t = [("backbone.embeddings.weight", model.embed, None, "copy")]
    for i in range(cfg.num_layers):
        pre = f"backbone.layers.{i}."
        mx = L.mixer
        t += [(pre + "norm.weight", L.norm.scale, i, "copy"),
              (pre + "mixer.in_proj.weight", mx.in_proj.kernel, i, "linear"),
              (pre + "mixer.conv1d.weight", mx.conv_weight, i, "conv"),
              (pre + "mixer.dt_bias", mx.dt_bias, i, "copy"),
              (pre + "mixer.A_log", mx.A_log, i, "copy"),
              (pre + "mixer.D", mx.D, i, "copy"),
              (pre + "mixer.norm.weight", mx.norm_weight, i, "copy"),
              (pre + "mixer.out_proj.weight", mx.out_proj.kernel, i, "linear")]
        if mx.conv_bias is not None:
            t.append((pre + "mixer.conv1d.bias", mx.conv_bias, i, "copy"))
        if mx.in_proj.bias is not None:
            t += [(pre + "mixer.in_proj.bias", mx.in_proj.bias, i, "copy"),
                  (pre + "mixer.out_proj.bias", mx.out_proj.bias, i, "copy")]
    t.append(("backbone.norm_f.weight", model.final_norm.scale, None, "copy"))
    if model.lm_head is not None:
        t.append(("lm_head.weight", model.lm_head.kernel, None, "linear"))
    return t


def load_mamba2(path, *, dtype: str | None = None):
    """HF Mamba2ForCausalLM directory -> (Mamba2LM, Mamba2Config)."""
    from flax import nnx

    from jaxlm.models.mamba2 import Mamba2LM

    cfg_path, d = _read_config(path)
    cfg = mamba2_config_from_hf(d, str(cfg_path))
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    model = _abstract(lambda: Mamba2LM(cfg, rngs=nnx.Rngs(0)))
    store = _open_store(path)
    keys = set(store.keys())
    if "backbone.embedding.weight" in keys and "backbone.embeddings.weight" not in keys:  # legacy name (HF hook)
        store = _Renamed(store, {"backbone.embeddings.weight": "backbone.embedding.weight"})
    ignore = ("lm_head.weight",) if cfg.tie_embeddings else ()
    import_tensors(mamba2_table(model), store, str(path), ignore=ignore)
    return model, cfg


def save_mamba2(model, out_dir, max_shard_bytes=None):
    """Write config.json + safetensors loadable by transformers' Mamba2ForCausalLM.from_pretrained."""
    tensors = export_tensors(mamba2_table(model))
    return _write(tensors, out_dir, mamba2_config_to_hf(model.cfg), max_shard_bytes)


class _Renamed:
    """A store view exposing some keys under new names: mapping new -> old."""

    def __init__(self, store, mapping):
        self.store, self.mapping = store, mapping
        self.inverse = {v: k for k, v in mapping.items()}

    def keys(self):
        return [self.inverse.get(k, k) for k in self.store.keys()]

    def shape(self, k):
        return self.store.shape(self.mapping.get(k, k))

    def __getitem__(self, k):
        return self.store[self.mapping.get(k, k)]


# ----------------------------------------------------------------------------------------------------------------
# Phi-Mamba (goombalab/phi-mamba LMHeadModel)

def phi_mamba_config_from_dict(d: dict, source: str = "config.json"):
    """The nested phi-mamba config (LanguageModel / MixerModel / Block1) -> PhiMambaConfig. An optional top-level
    "attn_layers" list (our extension, written by save_phi_mamba for hybrids) marks attention layers."""
    from jaxlm.config import preset
    from jaxlm.models.phi_mamba import PhiMambaConfig

    try:
        lm, mm, blk = d["LanguageModel"]["input"], d["MixerModel"]["input"], d["Block1"]
        core = blk["core_input"]
        vocab, mult = lm["vocab_size"], lm.get("pad_vocab_size_multiple", 1)
        dm, nl = mm["d_model"], mm["n_layer"]
        heads = core["n_v_heads"]
    except KeyError as e:
        raise ConfigError(f"{source}: missing phi-mamba config field {e.args[0]!r}") from None
    if core.get("n_qk_heads", heads) != heads:
        raise ConfigError(f"{source}: n_qk_heads={core['n_qk_heads']} != n_v_heads={heads} is not supported")
    if blk.get("CoreType", "modules.mixers.discrete_mamba2") != "modules.mixers.discrete_mamba2":
        raise ConfigError(f"{source}: Block1.CoreType={blk['CoreType']!r}, expected modules.mixers.discrete_mamba2")
    if mm.get("lm_head_prenorm", "layer") != "layer":
        raise ConfigError(f"{source}: lm_head_prenorm={mm['lm_head_prenorm']!r}, only 'layer' is supported")
    padded = int(math.ceil(vocab / mult) * mult)
    hd = dm // heads
    base = preset("phi-1.5", vocab_size=padded, hidden_size=dm, num_layers=nl, num_heads=heads, num_kv_heads=heads,
                  head_dim=hd, intermediate_size=4 * dm, rotary_dim=max(2, (hd // 2) // 2 * 2))
    return PhiMambaConfig(base=base, d_state=core["d_state"], ssm_heads=heads, expand=core.get("expand", 1),
                          d_conv=core.get("d_conv", 4), conv_bias=core.get("conv_bias", True),
                          chunk_size=core.get("chunk_size", 128), ssm_bias=core.get("bias", False),
                          conv_activation=core.get("activation", "identity"),
                          attn_layers=tuple(d.get("attn_layers", ())))


def phi_mamba_config_to_dict(cfg, vocab_size: int | None = None) -> dict:
    b = cfg.base
    d = {
        "LanguageModel": {"input": {"vocab_size": vocab_size or b.vocab_size, "pad_vocab_size_multiple": 8}},
        "MixerModel": {"input": {"d_model": b.hidden_size, "n_layer": b.num_layers, "lm_head_prenorm": "layer"}},
        "Block1": {"n_layers": b.num_layers, "BlockType": "modules.phi_block", "block_input": {"resid_dropout": 0.0},
                   "CoreType": "modules.mixers.discrete_mamba2",
                   "core_input": {"d_state": cfg.d_state, "n_v_heads": cfg.heads, "n_qk_heads": cfg.heads,
                                  "d_conv": cfg.d_conv, "conv_bias": cfg.conv_bias, "expand": cfg.expand,
                                  "chunk_size": cfg.chunk_size, "activation": cfg.conv_activation,
                                  "bias": cfg.ssm_bias}},
    }
    if cfg.attn_layers:
        d["attn_layers"] = list(cfg.attn_layers)
    return d


def phi_mamba_table(model):
    b = model.cfg.base
    if b.block != "parallel" or b.mlp != "gelu" or b.norm != "layer":
        raise CheckpointError("the phi-mamba checkpoint layout needs a Phi block (parallel, gelu MLP, LayerNorm); "
                              f"got block={b.block!r}, mlp={b.mlp!r}, norm={b.norm!r}")
    t = [("backbone.embedding.weight", model.embed, None, "copy")]

    def lin(name, mod):
        out = [(name + ".weight", mod.kernel, None, "linear")]
        return out + ([(name + ".bias", mod.bias, None, "copy")] if mod.bias is not None else [])

    for i, blk in enumerate(model.layers):
        pre = f"backbone.layers.{i}."
        t += [(pre + "input_layernorm.weight", blk.attn_norm.scale, None, "copy"),
              (pre + "input_layernorm.bias", blk.attn_norm.bias, None, "copy")]
        t += lin(pre + "mlp.fc1", blk.mlp.up) + lin(pre + "mlp.fc2", blk.mlp.down)
        if blk.is_attention:  # HF Phi attention names (phi-mamba's phi_attention mixer)
            a = blk.attn
            t += lin(pre + "mixer.q_proj", a.q) + lin(pre + "mixer.k_proj", a.k) + lin(pre + "mixer.v_proj", a.v)
            t += lin(pre + "mixer.dense", a.o)
        else:
            mx = blk.mixer
            t += lin(pre + "mixer.in_proj", mx.in_proj) + lin(pre + "mixer.out_proj", mx.out_proj)
            t += [(pre + "mixer.z_bias", mx.z_bias, None, "copy"), (pre + "mixer.D", mx.D, None, "copy"),
                  (pre + "mixer.conv1d.weight", mx.conv_weight, None, "conv")]
            if mx.conv_bias is not None:
                t.append((pre + "mixer.conv1d.bias", mx.conv_bias, None, "copy"))
    t += [("backbone.final_layernorm.weight", model.final_norm.scale, None, "copy"),
          ("backbone.final_layernorm.bias", model.final_norm.bias, None, "copy")]
    t += lin("lm_head", model.lm_head)
    return t


def load_phi_mamba(path, *, dtype: str | None = None):
    """phi-mamba checkpoint directory (config.json + model.safetensors) -> (PhiMambaLM, PhiMambaConfig)."""
    from flax import nnx

    from jaxlm.models.phi_mamba import PhiMambaLM

    cfg_path, d = _read_config(path)
    cfg = phi_mamba_config_from_dict(d, str(cfg_path))
    if dtype is not None:
        cfg = cfg.replace(base=cfg.base.replace(dtype=dtype))
    model = _abstract(lambda: PhiMambaLM(cfg, rngs=nnx.Rngs(0)))
    import_tensors(phi_mamba_table(model), _open_store(path), str(path))
    return model, cfg


def save_phi_mamba(model, out_dir, max_shard_bytes=None):
    return _write(export_tensors(phi_mamba_table(model)), out_dir, phi_mamba_config_to_dict(model.cfg),
                  max_shard_bytes)


__all__ = ["load_mamba2", "save_mamba2", "load_phi_mamba", "save_phi_mamba", "mamba2_config_from_hf",
           "mamba2_config_to_hf", "phi_mamba_config_from_dict", "phi_mamba_config_to_dict", "import_tensors",
           "export_tensors"]

