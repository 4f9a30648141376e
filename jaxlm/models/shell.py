"""The LM shell shared by every language model: token embedding (with an optional scale), input embeddings,
final norm, tied or untied head, logit scale.

`LMShell` is a base class rather than a submodule so its parameters keep the top-level paths the checkpoint key
tables name (`embed`, `final_norm.*`, `lm_head.*`; see jaxlm/io/families.py and jaxlm/io/mamba_hf.py). A model calls
`init_embedding` before building its layers and `init_head` after (the parameter RNG stream keeps its order), then
uses `embed_inputs` and `head` around its stack:

    class MyLM(LMShell):
        def __init__(self, cfg, *, rngs):
            self.init_embedding(ShellConfig.of(cfg), rngs)
            self.layers = ...
            self.init_head(rngs)

        def __call__(self, input_ids=None, *, embeds=None, prefix_embeds=None):
            return self.head(self.layers(self.embed_inputs(input_ids, embeds, prefix_embeds)))

Inputs: token ids [B, T]; or `embeds` [B, T, D], residual-stream inputs taken as they are (what `embed_tokens`
returns, i.e. already multiplied by the embed scale), e.g. from a vision encoder or adapter; and optionally
`prefix_embeds` [B, P, D] put before them. The sequence the stack sees is [prefix; tokens], P + T long.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ShapeError
from jaxlm.nn import Linear, Norm, param
from jaxlm.nn.linear import dense
from jaxlm.sharding import shard


@dataclass(frozen=True)
class ShellConfig:
    vocab_size: int
    hidden_size: int
    norm: str = "rms"
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    lm_head_bias: bool = False
    embed_scale: float = 1.0
    logit_scale: float = 1.0
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"

    @classmethod
    def of(cls, cfg) -> "ShellConfig":
        """From a DecoderConfig, a Mamba2Config (RMS norm, no scales, no head bias) or a PhiMambaConfig (its base)."""
        cfg = getattr(cfg, "base", cfg)
        return cls(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, norm=getattr(cfg, "norm", "rms"),
                   norm_eps=cfg.norm_eps, tie_embeddings=cfg.tie_embeddings,
                   lm_head_bias=getattr(cfg, "lm_head_bias", False), embed_scale=getattr(cfg, "embed_scale", 1.0),
                   logit_scale=getattr(cfg, "logit_scale", 1.0), init_std=cfg.init_std, dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype)


def _shape(x) -> tuple:
    return tuple(getattr(x, "shape", ()))


class LMShell(nnx.Module):
    """Base class of DecoderLM, Mamba2LM and PhiMambaLM (see the module docstring)."""

    def init_embedding(self, sc: ShellConfig, rngs: nnx.Rngs):
        self.shell = sc
        self.embed = param(rngs, (sc.vocab_size, sc.hidden_size), ("vocab", "embed"), sc.init_std,
                           jnp.dtype(sc.param_dtype))

    def init_head(self, rngs: nnx.Rngs):
        sc = self.shell
        pdt = jnp.dtype(sc.param_dtype)
        self.final_norm = Norm(sc.hidden_size, sc.norm, sc.norm_eps, param_dtype=pdt)
        self.lm_head = None if sc.tie_embeddings else Linear(
            sc.hidden_size, sc.vocab_size, ("embed", "vocab"), bias=sc.lm_head_bias, std=sc.init_std,
            dtype=jnp.dtype(sc.dtype), param_dtype=pdt, rngs=rngs)

    # -- inputs
    def embed_tokens(self, input_ids):
        """input_ids [B, T] -> [B, T, D] in the compute dtype, times the embed scale."""
        h = jnp.take(self.embed[...], input_ids, axis=0).astype(jnp.dtype(self.shell.dtype))
        if self.shell.embed_scale != 1.0:
            h = h * self.shell.embed_scale
        return shard(h, ("batch", "length", "act_embed"))

    def _check_embeds(self, x, name: str, batch: int | None = None):
        D, s = self.shell.hidden_size, _shape(x)
        if len(s) != 3 or s[-1] != D:
            raise ShapeError(f"{type(self).__name__}: {name} has shape {s}; expected [B, T, {D}] "
                             f"(hidden_size={D})")
        if batch is not None and s[0] != batch:
            raise ShapeError(f"{type(self).__name__}: {name} has shape {s} but the inputs after it have batch "
                             f"{batch}")
        return shard(jnp.asarray(x).astype(jnp.dtype(self.shell.dtype)), ("batch", "length", "act_embed"))

    def embed_inputs(self, input_ids=None, embeds=None, prefix_embeds=None):
        """The stack's input [B, P + T, D] from token ids [B, T] or embeds [B, T, D], after prefix_embeds [B, P, D]
        when given."""
        name = type(self).__name__
        if input_ids is not None and embeds is not None:
            raise ShapeError(f"{name}: give input_ids {_shape(input_ids)} or embeds {_shape(embeds)}, not both "
                             f"(prefix_embeds= puts embeddings before token ids)")
        if input_ids is not None:
            if len(_shape(input_ids)) != 2:
                raise ShapeError(f"{name}: input_ids has shape {_shape(input_ids)}; expected [B, T] token ids")
            h = self.embed_tokens(input_ids)
        elif embeds is not None:
            h = self._check_embeds(embeds, "embeds")
        else:
            raise ShapeError(f"{name}: neither input_ids [B, T] nor embeds [B, T, {self.shell.hidden_size}] given"
                             + ("" if prefix_embeds is None else
                                f" (prefix_embeds {_shape(prefix_embeds)} only go before one of them)"))
        if prefix_embeds is None:
            return h
        pre = self._check_embeds(prefix_embeds, "prefix_embeds", batch=h.shape[0])
        return jnp.concatenate([pre, h], axis=1)

    # -- output
    def head(self, h):
        """Final norm, tied or untied projection to the vocabulary, logit scale -> float32 logits [B, T, V]."""
        h = self.final_norm(h)
        if self.lm_head is None:
            dt = jnp.dtype(self.shell.dtype)
            logits = dense(h.astype(dt), self.embed[...].astype(dt).T)  # 2-D product: no transposed grad copy
        else:
            logits = self.lm_head(h)
        logits = logits.astype(jnp.float32)
        if self.shell.logit_scale != 1.0:
            logits = logits * self.shell.logit_scale
        return shard(logits, ("batch", "length", "vocab"))


def sequence_positions(batch: int, length: int, start=None):
    """Positions [B, T]: arange(T), or start[:, None] + arange(T) given per-row starts [B]."""
    t = jnp.arange(length, dtype=jnp.int32)
    return jnp.broadcast_to(t, (batch, length)) if start is None else start[:, None] + t[None]




def splice_prefix(prefix, prefix_lens, embeds):
    """Row i: prefix[i, :prefix_lens[i]], then embeds[i], cut to embeds' length (right padding stays at the end).

    prefix [B, P, D], prefix_lens [B] int, embeds [B, T, D] -> [B, T, D]; T must hold prefix_lens + the real tokens.
    Used by generation to prefill prompts whose embedding prefixes differ in length in one padded block."""
    B, P, _ = prefix.shape
    T = embeds.shape[1]
    j = jnp.arange(T, dtype=jnp.int32)[None, :]
    pl = jnp.asarray(prefix_lens, jnp.int32)[:, None]
    pre = jnp.take_along_axis(prefix, jnp.broadcast_to(jnp.minimum(j, P - 1), (B, T))[..., None], axis=1)
    tok = jnp.take_along_axis(embeds, jnp.clip(j - pl, 0, T - 1)[..., None], axis=1)
    return jnp.where((j < pl)[..., None], pre.astype(embeds.dtype), tok)


__all__ = ["LMShell", "ShellConfig", "sequence_positions", "splice_prefix"]
