"""Worlds for Pandora: simulators whose states are short clips of rendered frames and whose actions are free text.

    from jaxlm.pandora import make_world, HELDOUT_SEEDS
    world = make_world("sprites", frame_size=32, clip_len=4, context_frames=2)   # or "babyai" (minigrid)
    rounds = world.episode(seed=7, n_rounds=4)    # list[Transition], consecutive rounds of one episode
    rounds[0].before.shape, rounds[0].action, rounds[0].action_id, rounds[0].after.shape
    # (2, 32, 32, 3) uint8, 'move the red square left twice', 3, (4, 32, 32, 3) uint8
    frames = world.reset(7)                       # (context_frames, H, W, 3): the initial state, repeated
    clip = world.step("move the blue ball up")    # (clip_len, H, W, 3): the clip that action produces

A round: `before` is the last `context_frames` frames of the episode so far (at the start, the initial frame
repeated), `action` the free text, `after` the `clip_len` frames the simulator renders while carrying it out; round
k's `before` is therefore the last frames of round k-1's `after` (when context_frames <= clip_len). `action_id`
indexes `world.action_texts` (one template per action class; `world.action_paraphrases[i]` are the phrasings the
generator draws from): the label of the inverse-dynamics classifier. Free text that is not one class (a compound
such as "go forward twice and turn left") still runs in `step`; its `world.last_action_id` is -1.

Seeds: an episode is a pure function of (world settings, seed): the layout comes from the seed and the generated
actions from `np.random.default_rng([seed, 1])` unless `rng` is given. `HELDOUT_SEEDS` (fixed, never drawn for
training) are disjoint from `TRAIN_SEEDS`; `draw_train_seeds(rng, n)` draws training seeds.

Bad input raises `ActionError` (a JaxlmError naming the action: empty, over-long, unknown words, an object that is
not in the scene) or `ShapeError` from `check_frames` (frames of the wrong size, channel count or dtype).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from jaxlm.errors import ConfigError, JaxlmError, ShapeError

MAX_ACTION_CHARS = 200   # longer action text is rejected
MAX_ACTION_STEPS = 8     # primitive steps one action may expand to
TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_SEEDS: tuple[int, ...] = tuple(range(1_000_000, 1_000_000 + 512))


class ActionError(JaxlmError):
    """A free-text action the world cannot carry out: empty, too long, unknown words or objects (names the text)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Transition:
    """One round: the state before (Tb, H, W, 3) uint8, the action text and class, the clip after (Ta, H, W, 3).
    (eq=False: compare the arrays yourself; == of numpy fields would be ambiguous.)"""

    before: np.ndarray
    action: str
    action_id: int
    after: np.ndarray
    seed: int
    round: int


def draw_train_seeds(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` training environment seeds (from TRAIN_SEEDS; never one of HELDOUT_SEEDS)."""
    return rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop, size=int(n))


def check_frames(frames, frame_size: int, where: str = "frames", length: int | None = None) -> np.ndarray:
    """`frames` as a (T, H, W, 3) or (B, T, H, W, 3) uint8 array with H == W == frame_size (and T == length when
    given); a ShapeError naming `where` and the shape otherwise."""
    a = np.asarray(frames)
    if a.ndim not in (4, 5) or a.shape[-1] != 3 or a.shape[-3:-1] != (frame_size, frame_size):
        raise ShapeError(f"{where}: expected (T, {frame_size}, {frame_size}, 3) or (B, T, {frame_size}, "
                         f"{frame_size}, 3) RGB frames, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ShapeError(f"{where}: expected uint8 frames, got dtype {a.dtype} (shape {a.shape})")
    if length is not None and a.shape[-4] != length:
        raise ShapeError(f"{where}: expected {length} frames, got {a.shape[-4]} (shape {a.shape})")
    return a


# ------------------------------------------------------------------------------------------ free-text parsing

_COUNTS = {"once": 1, "twice": 2, "thrice": 3, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_COUNT_RE = re.compile(r"\b(once|twice|thrice|(?:one|two|three|four|five|\d+)\s+(?:times?|steps?|cells?|squares?))\b")
_SPLIT_RE = re.compile(r"\s*(?:,|;|\band then\b|\bthen\b|\band\b)\s*")


def normalize_action(text) -> str:
    """Lower-cased, single-spaced action text; ActionError for non-strings, empty or over-long text."""
    if not isinstance(text, str):
        raise ActionError(f"action must be a string, got {type(text).__name__} {text!r}")
    t = " ".join(text.lower().replace(".", " ").replace("!", " ").split())
    if not t:
        raise ActionError(f"empty action {text!r}")
    if len(text) > MAX_ACTION_CHARS:
        raise ActionError(f"action is {len(text)} characters, more than {MAX_ACTION_CHARS}: {text[:60]!r}...")
    return t


def split_clauses(text: str) -> list[tuple[str, int]]:
    """Normalized text -> [(clause without its count, count)]: "go forward twice and turn left" ->
    [("go forward", 2), ("turn left", 1)]."""
    out = []
    for clause in _SPLIT_RE.split(text):
        clause = clause.strip()
        if not clause:
            continue
        n, m = 1, _COUNT_RE.search(clause)
        if m:
            word = m.group(1).split()[0]
            n = _COUNTS[word] if word in _COUNTS else int(word)
            clause = (clause[:m.start()] + clause[m.end():]).strip()
        out.append((" ".join(clause.split()), n))
    return out


def parse_steps(text, clause_fn: Callable[[str, str], list], where: str) -> list:
    """Free text -> the list of primitive steps: each clause through `clause_fn(clause, original)` (a list of
    steps, or ActionError), repeated by its count; ActionError when the whole is empty or longer than
    MAX_ACTION_STEPS."""
    t = normalize_action(text)
    steps = []
    for clause, n in split_clauses(t):
        if n < 1:
            raise ActionError(f"{where}: count {n} in action {text!r} must be at least 1")
        one = clause_fn(clause, text)
        steps += one * n
        if len(steps) > MAX_ACTION_STEPS:
            raise ActionError(f"{where}: action {text!r} expands to more than {MAX_ACTION_STEPS} primitive steps")
    if not steps:
        raise ActionError(f"{where}: action {text!r} has no step")
    return steps


def spread(states: Sequence, clip_len: int) -> list:
    """`clip_len` entries of `states` (the state after each primitive step, len >= 1) spread over the clip: entry i
    is the state after step ceil((i + 1) * n / clip_len), so the last frame is always the final state."""
    n = len(states)
    return [states[-(-((i + 1) * n) // clip_len) - 1] for i in range(clip_len)]


# ------------------------------------------------------------------------------------------------- the base


class World:
    """The common interface and its shared behaviour; subclasses implement `_reset_state(seed)`, `_render()`,
    `_parse(text) -> steps`, `_run(steps) -> list of frames after each step`, `_sample_action(rng) -> (text, id)`,
    and set `name`, `action_texts`, `action_paraphrases`."""

    name = "world"
    action_texts: list[str] = []
    action_paraphrases: list[list[str]] = []

    def __init__(self, frame_size: int = 32, clip_len: int = 4, context_frames: int = 2):
        for k, v, lo in (("frame_size", frame_size, 8), ("clip_len", clip_len, 1),
                         ("context_frames", context_frames, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{type(self).__name__}: {k} must be an integer >= {lo}, got {v!r}")
        self.frame_size, self.clip_len, self.context_frames = frame_size, clip_len, context_frames
        self.seed: int | None = None
        self.history: list[np.ndarray] = []
        self.last_action_id = -1

    @property
    def n_classes(self) -> int:
        return len(self.action_texts)

    def settings(self) -> dict:
        """JSON fields that determine the world's frames (pipelines store them in their resume state)."""
        return {"world": self.name, "frame_size": self.frame_size, "clip_len": self.clip_len,
                "context_frames": self.context_frames}

    # ---- interactive use
    def reset(self, seed: int) -> np.ndarray:
        """Start the episode of `seed`; returns the initial context (context_frames, H, W, 3) uint8."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"{self.name}: seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self._reset_state(self.seed)
        self.history = [self._render()]
        self.last_action_id = -1
        return self.context()

    def context(self) -> np.ndarray:
        """The last context_frames frames of the episode so far (the first frame repeated at the start)."""
        h = self.history[-self.context_frames:]
        return np.stack([h[0]] * (self.context_frames - len(h)) + h)

    def step(self, action: str) -> np.ndarray:
        """Carry out the free-text `action`; returns the clip it produces (clip_len, H, W, 3) uint8."""
        if self.seed is None:
            raise ConfigError(f"{self.name}: call reset(seed) before step({action!r})")
        steps = self._parse(action)
        self.last_action_id = self.class_of(steps)
        clip = spread(self._run(steps), self.clip_len)
        self.history = (self.history + clip)[-max(self.context_frames, 1):]
        return np.stack(clip)

    def class_of(self, steps) -> int:
        """The action class whose primitive steps are `steps`, or -1."""
        return -1

    # ---- generation
    def episode(self, seed: int, n_rounds: int, rng: np.random.Generator | None = None,
                actions: Sequence[str] | None = None) -> list[Transition]:
        """`n_rounds` consecutive rounds from the start of episode `seed`: generated actions (drawn with `rng`,
        default `np.random.default_rng([seed, 1])`), or the given `actions` texts."""
        if isinstance(n_rounds, bool) or not isinstance(n_rounds, int) or n_rounds < 1:
            raise ConfigError(f"{self.name}: n_rounds must be a positive integer, got {n_rounds!r}")
        if actions is not None and len(actions) != n_rounds:
            raise ConfigError(f"{self.name}: {len(actions)} actions given for n_rounds={n_rounds}")
        rng = np.random.default_rng([int(seed), 1]) if rng is None else rng
        self.reset(seed)
        out = []
        for k in range(n_rounds):
            before = self.context()
            text = self._sample_action(rng) if actions is None else actions[k]
            after = self.step(text)
            out.append(Transition(before, text, self.last_action_id, after, int(seed), k))
        return out

    def alternative_action(self, seed: int, action: str, rng: np.random.Generator, tries: int = 100) -> str:
        """A generated action of another class than `action` from the initial state of episode `seed` (for
        counterfactuals); leaves the world reset at `seed`."""
        self.reset(seed)
        cls = self.class_of(self._parse(action))
        for _ in range(tries):
            text = self._random_action(rng)
            if self.class_of(self._parse(text)) != cls:
                self.reset(seed)
                return text
        raise ConfigError(f"{self.name}: no action of another class than {action!r} found for seed {seed}")

    def transitions(self, seeds: Sequence[int], n_rounds: int = 1, offset: int = 0) -> list[Transition]:
        """Every round of the episodes of `seeds` (actions drawn from `default_rng([seed, 1 + offset])`)."""
        return [t for s in seeds for t in self.episode(int(s), n_rounds, np.random.default_rng([int(s), 1 + offset]))]

    # ---- subclass hooks
    def _reset_state(self, seed: int) -> None:
        raise NotImplementedError

    def _render(self) -> np.ndarray:
        raise NotImplementedError

    def _parse(self, text: str) -> list:
        raise NotImplementedError

    def _run(self, steps: list) -> list[np.ndarray]:
        raise NotImplementedError

    def _sample_action(self, rng: np.random.Generator) -> str:
        raise NotImplementedError

    def _random_action(self, rng: np.random.Generator) -> str:
        """A random action from the current state (default: the generator's)."""
        return self._sample_action(rng)


WORLDS = ("sprites", "babyai")


def make_world(name: str = "sprites", *, frame_size: int = 32, clip_len: int = 4, context_frames: int = 2,
               **kw) -> World:
    """The world `name` ("sprites": the procedural sprite world; "babyai": minigrid's BabyAI levels, extra
    `world`); keyword arguments go to its constructor (SpriteWorld / BabyAIWorld)."""
    if name == "sprites":
        from jaxlm.pandora.sprites import SpriteWorld

        return SpriteWorld(frame_size=frame_size, clip_len=clip_len, context_frames=context_frames, **kw)
    if name == "babyai":
        from jaxlm.pandora.babyai import BabyAIWorld

        return BabyAIWorld(frame_size=frame_size, clip_len=clip_len, context_frames=context_frames, **kw)
    raise ConfigError(f"unknown world {name!r}; expected one of {list(WORLDS)}")


__all__ = ["ActionError", "Transition", "World", "make_world", "WORLDS", "HELDOUT_SEEDS", "TRAIN_SEEDS",
           "draw_train_seeds", "check_frames", "normalize_action", "split_clauses", "parse_steps", "spread",
           "MAX_ACTION_CHARS", "MAX_ACTION_STEPS"]
