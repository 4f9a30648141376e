"""(state, action, next state) batches for Pandora, generated on the fly from simulator seeds.

    from jaxlm.pandora import make_world, TransitionPipeline, heldout_batches
    world = make_world("sprites")
    pipe = TransitionPipeline(world, tokenizer, batch=8, max_action_len=32, seed=0, max_round=4)
    b = pipe.next()
    # before       float32 [8, Tb, H, W, 3] in [-1, 1]   the state (last frames so far)
    # after        float32 [8, Ta, H, W, 3] in [-1, 1]   the clip the action produces
    # action_ids   int32 [8, L]  the action text's tokens, right-padded with pad_id
    # action_mask  int32 [8, L]  1 on tokens, 0 on padding
    # action_class int32 [8]     the world's action class (-1: not one class)
    # env_seed int64 [8], round int32 [8], action_text <U [8], step int64 scalar
    evb = heldout_batches(world, tokenizer, batch=8, max_action_len=32, n_batches=2)   # HELDOUT_SEEDS, fixed

Example i of step s is round r of episode e, all drawn from `np.random.default_rng([seed, step_offset + s, i])`:
e from TRAIN_SEEDS (never a held-out seed), r uniform in [0, max_round), and the episode's actions from the same
generator, so a batch is a pure function of (world settings, seed, step): the iterator state is the next step
(SteppedPipeline), and a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import numpy as np

from jaxlm.data.stepped import SteppedPipeline
from jaxlm.errors import ConfigError, DataError, ShapeError
from jaxlm.pandora.world import HELDOUT_SEEDS, TRAIN_SEEDS, Transition, World


def frames_to_float(frames) -> np.ndarray:
    """uint8 frames -> float32 in [-1, 1]."""
    a = np.asarray(frames)
    if a.dtype != np.uint8:
        raise ShapeError(f"frames_to_float: expected uint8 frames, got {a.dtype} (shape {a.shape})")
    return a.astype(np.float32) / 127.5 - 1.0


def frames_to_uint8(frames) -> np.ndarray:
    """float frames in [-1, 1] -> uint8 (clipped, rounded): the inverse of frames_to_float."""
    a = np.asarray(frames, np.float32)
    return np.clip(np.round((a + 1.0) * 127.5), 0, 255).astype(np.uint8)


class ActionTokens:
    """Action texts -> right-padded int32 ids [B, L] and mask [B, L] with `tokenizer` (document mode: no BOS/EOS
    added; a cache per text). A text longer than `max_len` tokens is a DataError naming it."""

    def __init__(self, tokenizer, max_len: int):
        from jaxlm.io.tokenizer import Tokenizer, as_tokenizer

        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ConfigError(f"max_action_len must be a positive integer, got {max_len!r}")
        # document mode (special-token text stays text) where the tokenizer has one; no EOS is needed here
        plain = isinstance(tokenizer, Tokenizer) and tokenizer.eos_id is None
        self.tok, self.max_len = (tokenizer if plain else as_tokenizer(tokenizer)), max_len
        pad = self.tok.pad_id if self.tok.pad_id is not None else self.tok.eos_id
        self.pad_id = int(pad) if pad is not None else 0
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        got = self._cache.get(text)
        if got is None:
            got = [int(i) for i in self.tok.encode(text)]
            if len(got) > self.max_len:
                raise DataError(f"action {text!r} is {len(got)} tokens, longer than max_action_len={self.max_len}")
            self._cache[text] = got
        return got

    def __call__(self, texts) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(texts), self.max_len), self.pad_id, np.int32)
        mask = np.zeros((len(texts), self.max_len), np.int32)
        for i, t in enumerate(texts):
            row = self.ids(t)
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask


def collate(transitions: list[Transition], tokens: ActionTokens) -> dict:
    """Transitions -> the batch layout of TransitionPipeline (without "step")."""
    texts = [t.action for t in transitions]
    ids, mask = tokens(texts)
    return {"before": frames_to_float(np.stack([t.before for t in transitions])),
            "after": frames_to_float(np.stack([t.after for t in transitions])),
            "action_ids": ids, "action_mask": mask,
            "action_class": np.asarray([t.action_id for t in transitions], np.int32),
            "env_seed": np.asarray([t.seed for t in transitions], np.int64),
            "round": np.asarray([t.round for t in transitions], np.int32),
            "action_text": np.asarray(texts)}


BATCH_SPEC = {"before": ("batch", None, None, None, None), "after": ("batch", None, None, None, None),
              "action_ids": ("batch", "length"), "action_mask": ("batch", "length"), "action_class": ("batch",)}


class TransitionPipeline(SteppedPipeline):
    """Seeded (before, action, after) batches of `world` (see the module docstring); the engine's pipeline
    contract: next(), get_state(), set_state(), batch_at(step). `BATCH_SPEC` gives logical axes for a Task."""

    def __init__(self, world: World, tokenizer, batch: int, *, max_action_len: int = 32, seed: int = 0,
                 max_round: int = 4, step_offset: int = 0, process_index: int = 0, process_count: int = 1):
        if not isinstance(world, World):
            raise ConfigError(f"TransitionPipeline: world must be a jaxlm.pandora World, got {type(world).__name__}")
        for k, v in (("batch", batch), ("max_round", max_round)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"TransitionPipeline: {k} must be a positive integer, got {v!r}")
        if batch % process_count:
            raise ConfigError(f"TransitionPipeline: batch={batch} is not divisible by {process_count} processes")
        self.world, self.tokens = world, ActionTokens(tokenizer, max_action_len)
        self.batch, self.seed, self.max_round, self.step_offset = batch, int(seed), max_round, int(step_offset)
        k = batch // process_count
        self.rows = range(process_index * k, (process_index + 1) * k)
        self.step = 0

    def example(self, step: int, i: int) -> Transition:
        """Example i of the global batch at `step`."""
        rng = np.random.default_rng([self.seed, self.step_offset + int(step), int(i)])
        env_seed = int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop))
        r = int(rng.integers(self.max_round))
        return self.world.episode(env_seed, r + 1, rng)[-1]

    def batch_at(self, step: int) -> dict:
        return {**collate([self.example(step, i) for i in self.rows], self.tokens), "step": np.int64(step)}

    def identity(self) -> dict:
        return {"seed": self.seed, "step_offset": self.step_offset, "batch": self.batch, "max_round": self.max_round,
                "max_action_len": self.tokens.max_len, **self.world.settings()}


def heldout_transitions(world: World, n: int, *, n_rounds: int = 1, seeds=HELDOUT_SEEDS) -> list[Transition]:
    """The first `n` rounds of the episodes of `seeds` (default the fixed HELDOUT_SEEDS), `n_rounds` per episode,
    with each episode's default actions (`default_rng([seed, 1])`): the same every time."""
    need = -(-int(n) // n_rounds)
    if need > len(seeds):
        raise ConfigError(f"heldout_transitions: {n} examples need {need} seeds of {n_rounds} rounds, "
                          f"only {len(seeds)} held out")
    return world.transitions(list(seeds)[:need], n_rounds)[:n]


def heldout_batches(world: World, tokenizer, batch: int, n_batches: int, *, max_action_len: int = 32,
                    n_rounds: int = 1, seeds=HELDOUT_SEEDS) -> list[dict]:
    """`n_batches` fixed held-out batches in TransitionPipeline's layout (for the engine's eval_batches)."""
    tokens = ActionTokens(tokenizer, max_action_len)
    ts = heldout_transitions(world, batch * n_batches, n_rounds=n_rounds, seeds=seeds)
    return [collate(ts[i:i + batch], tokens) for i in range(0, len(ts), batch)]


__all__ = ["TransitionPipeline", "ActionTokens", "collate", "heldout_transitions", "heldout_batches",
           "frames_to_float", "frames_to_uint8", "BATCH_SPEC"]
