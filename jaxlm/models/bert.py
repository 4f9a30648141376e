"""A BERT-family bidirectional encoder and sentence embeddings (the sentence-transformers recipe).

`BertEncoder(cfg)`: word + absolute position + token-type embeddings, a LayerNorm, then `num_layers` post-LN blocks
(x = LN(x + Attn(x)); x = LN(x + MLP(x)), the MLP with exact (erf) GELU); bidirectional attention through
`jaxlm.nn.attention.attend(causal=False, kv_mask=...)`. `__call__(ids, mask, token_types=None)` returns the last
hidden states [B, T, D].

`sentence_embedding(model, ids, mask)`: the mean of the hidden states over real tokens, L2-normalised, which is what
sentence-transformers' Pooling(mean) + Normalize modules compute for all-MiniLM-L6-v2. `jaxlm.io.bert_hf` imports
HF `BertModel` checkpoints (`load_bert`) and the bundled all-MiniLM-L6-v2 (`minilm_path`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ConfigError, ShapeError
from jaxlm.nn.attention import attend
from jaxlm.nn.linear import Linear, param
from jaxlm.nn.norms import Norm


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    init_std: float = 0.02
    dtype: str = "float32"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"BertConfig: hidden_size={self.hidden_size} is not a multiple of "
                              f"num_heads={self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, conf: dict, source: str = "config.json") -> "BertConfig":
        if conf.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{source}: position_embedding_type={conf['position_embedding_type']!r}; only "
                              f"'absolute' is supported")
        if conf.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(f"{source}: hidden_act={conf['hidden_act']!r}; only 'gelu' (exact) is supported")
        try:
            return cls(vocab_size=conf["vocab_size"], hidden_size=conf["hidden_size"],
                       num_layers=conf["num_hidden_layers"], num_heads=conf["num_attention_heads"],
                       intermediate_size=conf["intermediate_size"],
                       max_positions=conf.get("max_position_embeddings", 512),
                       type_vocab_size=conf.get("type_vocab_size", 2), norm_eps=conf.get("layer_norm_eps", 1e-12))
        except KeyError as e:
            raise ConfigError(f"{source}: missing key {e.args[0]!r} of a BERT config") from None


class BertBlock(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(bias=True, std=cfg.init_std, dtype=jnp.dtype(cfg.dtype), rngs=rngs)
        self.q = Linear(d, d, ("embed", "heads"), **kw)
        self.k = Linear(d, d, ("embed", "heads"), **kw)
        self.v = Linear(d, d, ("embed", "heads"), **kw)
        self.o = Linear(d, d, ("heads", "embed"), **kw)
        self.attn_norm = Norm(d, "layer", cfg.norm_eps, bias=True)
        self.up = Linear(d, f, ("embed", "mlp"), **kw)
        self.down = Linear(f, d, ("mlp", "embed"), **kw)
        self.mlp_norm = Norm(d, "layer", cfg.norm_eps, bias=True)
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim

    def __call__(self, x, mask):
        B, T, D = x.shape
        split = lambda t: t.reshape(B, T, self.heads, self.head_dim)  # noqa: E731
        o = attend(split(self.q(x)), split(self.k(x)), split(self.v(x)), causal=False, kv_mask=mask)
        x = self.attn_norm(x + self.o(o.reshape(B, T, D)))
        return self.mlp_norm(x + self.down(jax.nn.gelu(self.up(x), approximate=False)))


class BertEncoder(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        self.word = param(rngs, (cfg.vocab_size, d), ("vocab", "embed"), cfg.init_std)
        self.position = param(rngs, (cfg.max_positions, d), (None, "embed"), cfg.init_std)
        self.token_type = param(rngs, (cfg.type_vocab_size, d), (None, "embed"), cfg.init_std)
        self.embed_norm = Norm(d, "layer", cfg.norm_eps, bias=True)
        self.layers = nnx.List([BertBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    def __call__(self, ids, mask, token_types=None):
        """ids [B, T] int, mask [B, T] (True/1 = a real token) -> hidden states [B, T, D]."""
        B, T = ids.shape
        if tuple(mask.shape) != (B, T):
            raise ShapeError(f"BertEncoder: mask has shape {tuple(mask.shape)}; expected ids' shape {(B, T)}")
        if T > self.cfg.max_positions:
            raise ShapeError(f"BertEncoder: {T} tokens exceed max_positions={self.cfg.max_positions}")
        tt = jnp.zeros((B, T), jnp.int32) if token_types is None else token_types
        x = self.word[...][ids] + self.position[...][:T][None] + self.token_type[...][tt]
        x = self.embed_norm(x.astype(jnp.dtype(self.cfg.dtype)))
        m = jnp.asarray(mask, bool)
        for blk in self.layers:
            x = blk(x, m)
        return x


def mean_pool(hidden, mask, normalize: bool = True):
    """Mean over the real tokens ([B, T, D], [B, T] -> [B, D]); L2-normalised (eps 1e-12) when `normalize`."""
    w = jnp.asarray(mask, hidden.dtype)[..., None]
    pooled = (hidden * w).sum(1) / jnp.maximum(w.sum(1), 1e-9)
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


def sentence_embedding(model: BertEncoder, ids, mask, normalize: bool = True):
    return mean_pool(model(ids, mask), mask, normalize)
