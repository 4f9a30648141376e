"""The sprite world: a few coloured shapes on a grid, moved cell by cell by free-text actions (the fast unit-test
world of Pandora; pure numpy, ~10 µs a frame).

A seed fixes the scene: `n_objects` objects of distinct colours (from COLORS), each a random shape (square, ball,
cross), on distinct cells of a `grid` x `grid` board. "move the red square left twice" slides the red object two
cells left; it stops at the border and before another object. The clip is smooth: each cell of motion is drawn
in clip_len sub-steps, spread over the clip. The action classes are colour x direction ("move the red {shape}
left", 16 classes); the count ("twice", "3 steps") is free text on top of a class.

Grammar (case-insensitive): clauses joined by "and" / "then" / ",", each naming one colour in the scene, at most
one direction (left/right/up/down, west/east/north/south), optionally its shape (which must match) and a count;
other words must be fillers ("move", "push", "the", "to", ...). Anything else is an ActionError naming the word.
"""

from __future__ import annotations

import numpy as np

from jaxlm.errors import ConfigError
from jaxlm.pandora.world import ActionError, World, parse_steps

COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40)}
SHAPES = ("square", "ball", "cross")
SHAPE_WORDS = {"square": "square", "box": "square", "block": "square", "ball": "ball", "circle": "ball",
               "dot": "ball", "cross": "cross", "plus": "cross"}
DIRS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
DIR_WORDS = {"left": "left", "west": "left", "right": "right", "east": "right", "up": "up", "north": "up",
             "upwards": "up", "down": "down", "south": "down", "downwards": "down"}
FILLERS = {"move", "moves", "push", "slide", "shift", "go", "goes", "the", "a", "to", "towards", "it", "one",
           "object", "sprite", "shape", "please", "by", "cell", "cells", "step", "steps"}
BACKGROUND = (24, 24, 32)
_PARAPHRASES = ("move the {color} {{shape}} {dir}", "push the {color} {{shape}} {dir}",
                "slide the {color} one {dir}", "the {color} {{shape}} goes {dir}",
                "shift the {color} {{shape}} to the {dir}")
_COUNT_TEXT = {1: ("", " once", " one step"), 2: (" twice", " two steps", " 2 times"), 3: (" three times", " 3 steps")}


def _shape_mask(shape: str, c: int) -> np.ndarray:
    yy, xx = np.mgrid[0:c, 0:c] + 0.5
    if shape == "square":
        m = np.ones((c, c), bool)
        if c >= 4:
            m[0, 0] = m[0, -1] = m[-1, 0] = m[-1, -1] = False  # rounded corners tell it from the cross
        return m if m.any() else np.ones((c, c), bool)
    if shape == "ball":
        r = c / 2
        m = (xx - r) ** 2 + (yy - r) ** 2 <= (r * 0.95) ** 2
        return m
    w = max(1, c // 3)
    lo = (c - w) // 2
    m = np.zeros((c, c), bool)
    m[lo:lo + w] = True
    m[:, lo:lo + w] = True
    return m


class SpriteWorld(World):
    name = "sprites"

    def __init__(self, frame_size: int = 32, clip_len: int = 4, context_frames: int = 2, *, grid: int = 8,
                 n_objects: int = 3, effective_only: bool = True):
        super().__init__(frame_size, clip_len, context_frames)
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 3 or frame_size % grid:
            raise ConfigError(f"SpriteWorld: grid={grid!r} must be an integer >= 3 dividing frame_size={frame_size}")
        if not 1 <= n_objects <= len(COLORS) or n_objects > grid * grid:
            raise ConfigError(f"SpriteWorld: n_objects={n_objects!r} must be between 1 and {len(COLORS)}")
        self.grid, self.n_objects, self.effective_only = grid, int(n_objects), bool(effective_only)
        self.cell = frame_size // grid
        self.masks = {s: _shape_mask(s, self.cell) for s in SHAPES}
        self.colors = list(COLORS)
        self.action_paraphrases = [[p.format(color=c, dir=d) for p in _PARAPHRASES] for c in COLORS for d in DIRS]
        self.action_texts = [ps[0] for ps in self.action_paraphrases]
        self.objects: list[dict] = []

    def settings(self) -> dict:
        return {**super().settings(), "grid": self.grid, "n_objects": self.n_objects,
                "effective_only": self.effective_only}

    # ---- state and rendering
    def _reset_state(self, seed):
        rng = np.random.default_rng([seed, 0])
        colors = rng.choice(len(COLORS), self.n_objects, replace=False)
        cells = rng.choice(self.grid * self.grid, self.n_objects, replace=False)
        self.objects = [{"color": self.colors[int(c)], "shape": SHAPES[int(rng.integers(len(SHAPES)))],
                         "cell": (int(k) % self.grid, int(k) // self.grid)} for c, k in zip(colors, cells)]

    def _draw(self, pixel_pos) -> np.ndarray:
        f = np.empty((self.frame_size, self.frame_size, 3), np.uint8)
        f[:] = BACKGROUND
        c = self.cell
        for o, (px, py) in zip(self.objects, pixel_pos):
            region = f[py:py + c, px:px + c]
            region[self.masks[o["shape"]]] = COLORS[o["color"]]
        return f

    def _render(self):
        return self._draw([(o["cell"][0] * self.cell, o["cell"][1] * self.cell) for o in self.objects])

    # ---- actions
    def _find(self, color: str, text: str) -> int:
        for i, o in enumerate(self.objects):
            if o["color"] == color:
                return i
        raise ActionError(f"sprites: action {text!r} names the {color} object, but the scene has only "
                          f"{[o['color'] for o in self.objects]}")

    def _clause(self, clause: str, text: str) -> list:
        color = shape = direction = None
        for w in clause.split():
            if w in COLORS:
                if color is not None and w != color:
                    raise ActionError(f"sprites: clause {clause!r} of action {text!r} names two objects")
                color = w
            elif w in SHAPE_WORDS:
                shape = SHAPE_WORDS[w]
            elif w in DIR_WORDS:
                if direction is not None and DIR_WORDS[w] != direction:
                    raise ActionError(f"sprites: clause {clause!r} of action {text!r} names two directions")
                direction = DIR_WORDS[w]
            elif w not in FILLERS:
                raise ActionError(f"sprites: unknown word {w!r} in action {text!r}")
        if color is None:
            raise ActionError(f"sprites: clause {clause!r} of action {text!r} names no object colour "
                              f"(one of {list(COLORS)})")
        if direction is None:
            raise ActionError(f"sprites: clause {clause!r} of action {text!r} names no direction (left/right/up/down)")
        i = self._find(color, text)
        if shape is not None and shape != self.objects[i]["shape"]:
            raise ActionError(f"sprites: action {text!r} names a {color} {shape}, but the {color} object is a "
                              f"{self.objects[i]['shape']}")
        return [(i, direction)]

    def _parse(self, text):
        return parse_steps(text, self._clause, "sprites")

    def class_of(self, steps):
        if len({s for s in steps}) != 1:
            return -1
        i, d = steps[0]
        return self.colors.index(self.objects[i]["color"]) * len(DIRS) + list(DIRS).index(d)

    def _target(self, i: int, direction: str):
        dx, dy = DIRS[direction]
        x, y = self.objects[i]["cell"]
        nx, ny = x + dx, y + dy
        if not (0 <= nx < self.grid and 0 <= ny < self.grid):
            return None
        if any(o["cell"] == (nx, ny) for j, o in enumerate(self.objects) if j != i):
            return None
        return nx, ny

    def _run(self, steps):
        frames, c, T = [], self.cell, self.clip_len
        for i, direction in steps:
            old = self.objects[i]["cell"]
            new = self._target(i, direction) or old
            pos = [(o["cell"][0] * c, o["cell"][1] * c) for o in self.objects]
            for j in range(1, T + 1):  # smooth: T sub-steps per cell
                f = j / T
                pos[i] = tuple(int(round((old[a] + f * (new[a] - old[a])) * c)) for a in (0, 1))
                frames.append(self._draw(pos))
            self.objects[i]["cell"] = new
        return frames

    def _sample_action(self, rng):
        for _ in range(20):
            i = int(rng.integers(self.n_objects))
            d = list(DIRS)[int(rng.integers(len(DIRS)))]
            if not self.effective_only or self._target(i, d) is not None:
                break
        o = self.objects[i]
        cls = self.colors.index(o["color"]) * len(DIRS) + list(DIRS).index(d)
        phr = self.action_paraphrases[cls][int(rng.integers(len(_PARAPHRASES)))]
        n = int(rng.choice([1, 1, 1, 2, 2, 3]))
        counts = _COUNT_TEXT[n]
        return phr.format(shape=o["shape"]) + counts[int(rng.integers(len(counts)))]


__all__ = ["SpriteWorld", "COLORS", "SHAPES", "DIRS"]
