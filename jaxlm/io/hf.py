"""Hugging Face checkpoint import/export for every decoder family, with the ORIGINAL key names.

`load_pretrained(dir)` validates every key and shape against the config BEFORE building anything: missing,
unexpected and mis-shaped keys are all reported in one CheckpointError. `save_pretrained(model, dir)` writes
config.json + safetensors (one file, or shards + index) that round-trip bit-exactly and that transformers loads
for the Llama and Phi families.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import DecoderConfig
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.io.families import FAMILY_LAYOUTS, Family, detect_family, ignored
from jaxlm.io.safetensors_io import TensorStore, write_safetensors

MAX_ERRORS_SHOWN = 12


# --------------------------------------------------------------------------- model state <-> flat dict
def abstract_shapes(cfg: DecoderConfig) -> tuple[object, dict[str, tuple]]:
    from jaxlm.models.decoder import DecoderLM

    abs_model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    gdef, state = nnx.split(abs_model)
    shapes = {".".join(map(str, p)): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(state)}
    return (gdef, state), shapes


def flat_params(model) -> dict[str, np.ndarray]:
    """Our parameter path ('layers.attn.q.kernel') -> host numpy array."""
    state = nnx.state(model, nnx.Param)
    return {".".join(map(str, p)): np.asarray(jax.device_get(v.get_value())) for p, v in nnx.to_flat_state(state)}


def build_model(cfg: DecoderConfig, arrays: dict[str, np.ndarray], shardings=None):
    """Assemble a DecoderLM from a complete flat dict without random initialisation."""
    (gdef, state), shapes = abstract_shapes(cfg)
    missing = sorted(set(shapes) - set(arrays))
    if missing:
        raise CheckpointError(f"missing parameters for {cfg.family}: {missing[:MAX_ERRORS_SHOWN]}")
    pdt = jnp.dtype(cfg.param_dtype)
    flat = []
    for p, v in nnx.to_flat_state(state):
        key = ".".join(map(str, p))
        arr = arrays[key]
        if tuple(arr.shape) != shapes[key]:
            raise CheckpointError(f"parameter {key}: shape {tuple(arr.shape)} != expected {shapes[key]}")
        x = jnp.asarray(arr, dtype=pdt)
        flat.append((p, v.replace(x)))
    model = nnx.merge(gdef, nnx.from_flat_state(flat))
    if shardings is not None:
        state = jax.device_put(nnx.state(model), shardings)
        nnx.update(model, state)
    return model


# --------------------------------------------------------------------------- HF -> ours
def _expected_hf_shape(rule, shapes, per_layer: bool) -> tuple:
    parts = [shapes[o][1:] if per_layer else shapes[o] for o in rule.ours]
    base = list(parts[0])
    if len(parts) > 1:
        base[rule.axis] = sum(p[rule.axis] for p in parts)
    return tuple(base[::-1]) if rule.transpose else tuple(base)


def convert_from_hf(store, cfg: DecoderConfig, fam: Family, source: str = "checkpoint") -> dict[str, np.ndarray]:
    _, shapes = abstract_shapes(cfg)
    rules = fam.rules(cfg)
    errors, consumed, out = [], set(), {}
    L = cfg.num_layers

    def fetch(key, want):
        if key not in store:
            return None
        got = tuple(store.shape(key))
        if got != want:
            errors.append(f"{key}: shape {list(got)} but the config expects {list(want)}")
            return None
        consumed.add(key)
        return store[key]

    def to_ours(rule, a):
        a = a.T if rule.transpose else a
        if len(rule.ours) == 1:
            return [a]
        sizes = np.cumsum([shapes[o][rule.axis] for o in rule.ours])[:-1]
        return np.split(a, sizes, axis=rule.axis)

    for rule in rules:
        if any(o not in shapes for o in rule.ours):
            errors.append(f"internal: rule {rule.hf} targets unknown parameter {rule.ours}")
            continue
        if rule.stacked:
            want = _expected_hf_shape(rule, shapes, per_layer=True)
            per = []
            for i in range(L):
                k = rule.hf.format(i=i)
                if k not in store:
                    errors.append(f"missing key {k} (expected shape {list(want)})")
                    continue
                a = fetch(k, want)
                if a is not None:
                    per.append(to_ours(rule, a))
            if len(per) == L:
                for j, o in enumerate(rule.ours):
                    out[o] = np.stack([p[j] for p in per])
        elif rule.shared:
            want = _expected_hf_shape(rule, shapes, per_layer=False)
            keys = [rule.hf.format(i=i) for i in range(L)]
            present = [k for k in keys if k in store]
            if not present:
                errors.append(f"missing key {keys[0]} (the shared MLP, expected shape {list(want)})")
                continue
            arrs = [(k, fetch(k, want)) for k in present]
            arrs = [(k, a) for k, a in arrs if a is not None]
            if not arrs:
                continue
            k0, a0 = arrs[0]
            differ = [k for k, a in arrs[1:] if not np.array_equal(a, a0)]
            if differ:
                errors.append(f"the shared MLP is stored per layer but {differ[0]} differs from {k0} "
                              f"({len(differ)} copies differ); this checkpoint has one FFN per block: load it with "
                              f"shared_mlp=False (e.g. preset mobillama-1b)")
                continue
            out[rule.ours[0]] = to_ours(rule, a0)[0]
        else:
            want = _expected_hf_shape(rule, shapes, per_layer=False)
            if rule.hf not in store:
                if not rule.optional:
                    errors.append(f"missing key {rule.hf} (expected shape {list(want)})")
                continue
            a = fetch(rule.hf, want)
            if a is None:
                continue
            if rule.alias_of is not None:
                continue  # checked below, once the primary is loaded
            for o, part in zip(rule.ours, to_ours(rule, a)):
                out[o] = part

    for rule in rules:  # tied duplicates must equal their primary
        if rule.alias_of is not None and rule.hf in consumed and rule.alias_of in out:
            if not np.array_equal(np.asarray(store[rule.hf]), out[rule.alias_of]):
                errors.append(f"{rule.hf} differs from the tied embedding although tie_word_embeddings=true")

    unexpected = sorted(k for k in store.keys() if k not in consumed and not ignored(k, fam))
    for k in unexpected:
        errors.append(f"unexpected key {k} (shape {list(store.shape(k))}) for family {fam.name}")
    if errors:
        head = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise CheckpointError(f"{source} does not match the {fam.name} config:\n  {head}{more}")
    return out


def _detect_mobillama(store, hf_cfg: dict) -> bool:
    """MobiLlama checkpoints look like Llama; they differ by full-MHA k/v despite num_key_value_heads<heads,
    or by an FFN stored once (layer 0 only) or as identical copies under every layer."""
    L, heads = int(hf_cfg.get("num_hidden_layers", 0)), int(hf_cfg.get("num_attention_heads", 1))
    kv = int(hf_cfg.get("num_key_value_heads") or heads)
    k0 = "model.layers.0.self_attn.k_proj.weight"
    if kv < heads and k0 in store and store.shape(k0)[0] == hf_cfg["hidden_size"]:
        return True
    g = "model.layers.{i}.mlp.gate_proj.weight"
    if L > 1 and g.format(i=0) in store and g.format(i=1) not in store:
        return True
    return False


def _mobillama_shared(store, L: int) -> bool:
    g = "model.layers.{i}.mlp.{p}_proj.weight"
    if L > 1 and g.format(i=1, p="gate") not in store:
        return True
    for p in ("gate", "up", "down"):
        a0 = store[g.format(i=0, p=p)] if g.format(i=0, p=p) in store else None
        for i in range(1, L):
            k = g.format(i=i, p=p)
            if a0 is None or k not in store or not np.array_equal(store[k], a0):
                return False
    return True


def read_hf_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.exists():
        raise CheckpointError(f"{f} not found (a Hugging Face checkpoint directory needs config.json)")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: invalid JSON ({e})") from None


def config_from_hf(hf_cfg: dict, family: str, store=None, shared_mlp: bool | None = None) -> DecoderConfig:
    fam = FAMILY_LAYOUTS[family]
    try:
        cfg = fam.from_hf(hf_cfg)
    except KeyError as e:
        raise ConfigError(f"config.json lacks field {e} required for family {family}") from None
    if family == "mobillama":
        if shared_mlp is None:
            shared_mlp = hf_cfg.get("jaxlm_shared_mlp")
        if shared_mlp is None:
            shared_mlp = True if store is None else _mobillama_shared(store, cfg.num_layers)
        cfg = cfg.replace(shared_mlp=bool(shared_mlp))
    return cfg


def load_pretrained(path: str | os.PathLike, *, family: str | None = None, shared_mlp: bool | None = None,
                    dtype: str | None = None, param_dtype: str | None = None, expect: DecoderConfig | None = None,
                    shardings=None):
    """Load an HF checkpoint directory -> (DecoderLM, DecoderConfig). (Any format: jaxlm.io.load_model.)

    family: 'llama' | 'mobillama' | 'phi' | 'crystalcoder' (default: detected from config.json and the weights).
    shared_mlp: MobiLlama only; None = detect (FFN stored once, or identical copies under every layer), True =
    require one shared FFN (refuse if the per-layer copies differ), False = one FFN per block.
    expect: if given, raise ConfigError when the checkpoint's config differs from it (names the fields).
    """
    p = Path(path)
    if p.suffix == ".gguf":
        raise CheckpointError(f"{p} is a GGUF file, not a Hugging Face checkpoint directory: load it with "
                              f"jaxlm.load_model (or jaxlm.io.gguf.load_gguf)")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    # a single .safetensors file may be given; its config.json is the one beside it
    hf_cfg = read_hf_config(p.parent if p.is_file() else p)
    store = TensorStore.open(p)
    if family is None:
        family = detect_family(hf_cfg, str(p / "config.json"))
        if family == "llama" and _detect_mobillama(store, hf_cfg):
            family = "mobillama"
    if family not in FAMILY_LAYOUTS:
        raise ConfigError(f"family={family!r}: expected one of {sorted(FAMILY_LAYOUTS)}")
    cfg = config_from_hf(hf_cfg, family, store, shared_mlp)
    over = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    if over:
        cfg = cfg.replace(**over)
    if expect is not None:
        check_compatible(expect, cfg, str(p))
    arrays = convert_from_hf(store, cfg, FAMILY_LAYOUTS[family], str(p))
    return build_model(cfg, arrays, shardings), cfg


ARCH_FIELDS = ("family", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
               "intermediate_size", "norm", "block", "mlp", "mlp_bias", "qkv_bias", "out_bias", "shared_mlp",
               "rot_dim", "rope_style", "tie_embeddings", "lm_head_bias")


def check_compatible(expected: DecoderConfig, got: DecoderConfig, source: str):
    diffs = [f"{f}: config has {getattr(expected, f)!r}, checkpoint has {getattr(got, f)!r}"
             for f in ARCH_FIELDS if getattr(expected, f) != getattr(got, f)]
    if diffs:
        raise ConfigError(f"{source} does not match the requested config:\n  " + "\n  ".join(diffs))


# --------------------------------------------------------------------------- ours -> HF
def convert_to_hf(arrays: dict[str, np.ndarray], cfg: DecoderConfig, mlp_layout: str = "per_layer"
                  ) -> dict[str, np.ndarray]:
    if mlp_layout not in ("per_layer", "once"):
        raise ConfigError(f"mlp_layout={mlp_layout!r}: expected 'per_layer' or 'once'")
    fam = FAMILY_LAYOUTS[cfg.family]
    out = {}
    for rule in fam.rules(cfg):
        if not rule.write:
            continue

        def to_hf(parts):
            a = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=rule.axis)
            return np.ascontiguousarray(a.T if rule.transpose else a)

        if rule.stacked:
            for i in range(cfg.num_layers):
                out[rule.hf.format(i=i)] = to_hf([arrays[o][i] for o in rule.ours])
        elif rule.shared:
            a = to_hf([arrays[o] for o in rule.ours])
            for i in range(cfg.num_layers if mlp_layout == "per_layer" else 1):
                out[rule.hf.format(i=i)] = a.copy()
        else:
            out[rule.hf] = to_hf([arrays[o] for o in rule.ours])
    return out


def save_pretrained(model, out_dir: str | os.PathLike, *, cfg: DecoderConfig | None = None,
                    max_shard_bytes: int | None = None, mlp_layout: str = "per_layer", tokenizer=None) -> Path:
    """Write config.json + safetensors with the family's original key names (float32 unless params are bf16)."""
    cfg = model.cfg if cfg is None else cfg
    fam = FAMILY_LAYOUTS[cfg.family]
    fam.check(cfg)
    tensors = convert_to_hf(flat_params(model), cfg, mlp_layout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, out, max_shard_bytes)
    hf_cfg = fam.to_hf(cfg)
    if cfg.family == "mobillama" and mlp_layout == "once":
        hf_cfg["jaxlm_shared_mlp"] = True
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    if tokenizer is not None:
        tokenizer.save(out)
    return out
