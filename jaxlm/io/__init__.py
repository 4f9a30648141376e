"""Checkpoint formats: Hugging Face safetensors (import/export, original key names) and GGUF import."""
from jaxlm.io.hf import convert_from_hf, convert_to_hf, flat_params, load_pretrained, save_pretrained  # noqa: F401
