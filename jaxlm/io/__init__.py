"""Checkpoint formats and the ONE loader: `load_model(path)` (HF dir, GGUF, orbax run, quantized dir) and
`load_tokenizer(path)` (tokenizer.json, tokenizer.model, GGUF, a directory holding one)."""
from jaxlm.io.hf import convert_from_hf, convert_to_hf, flat_params, load_pretrained, save_pretrained  # noqa: F401
from jaxlm.io.load import CheckpointNotFoundError, checkpoint_format, load_model  # noqa: F401
from jaxlm.io.tokenizer import Tokenizer, as_tokenizer, load_tokenizer  # noqa: F401
