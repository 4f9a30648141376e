"""The BabyAI world: minigrid's BabyAI levels (extra `world`: minigrid 3.2.0, gymnasium 1.4.0) as a Pandora world.

A seed picks a level (`levels[seed % len(levels)]`) and its layout (`env.reset(seed=seed)`). Frames are the full
top-down view of the agent's starting room (walls and doors included; the agent is the red triangle), drawn from a
per-world cache of minigrid's own tiles rendered once at 16 px and area-averaged down to frame_size / room cells
(4 px at 32x32 for the 8x8 rooms), so a frame costs a few dozen array copies instead of minigrid's renderer.
The carried object is not drawn (minigrid does not draw it either); an agent that leaves the room leaves the view.

Actions are free text made of primitive steps, joined by "and" / "then" / ",", each with an optional count:
"go forward twice and turn left", "turn around", "pick up the yellow key", "drop the ball", "toggle the door",
"open the red door". Pick up / toggle act on the cell in front, drop on the carried object; a named object that is
not the one there makes that step a no-op (as the simulator would). Unknown words raise ActionError.

The action classes (`ACTIONS`, the inverse-dynamics labels) are short primitive sequences. Generated episodes
follow `policy`: "random" (a uniformly drawn class among those that change the state here), "bot" (the BabyAI
bot's expert plan for the level's mission, cut into classes; random once the mission is done) or "mixed" (each
round bot with probability `bot_prob`, else random). `world.mission` is the episode's mission text and
`world.mission_status` None until the level decides it ("success" / "failure").
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np

from jaxlm.errors import ConfigError
from jaxlm.pandora.world import ActionError, World, parse_steps

L, R, F, P, D, T, DONE = range(7)  # minigrid.core.actions.Actions
ACTIONS = (  # (template, primitive actions)
    ("turn left", (L,)),
    ("turn right", (R,)),
    ("go forward", (F,)),
    ("go forward twice", (F, F)),
    ("turn around", (L, L)),
    ("turn left and go forward", (L, F)),
    ("turn right and go forward", (R, F)),
    ("pick up the {obj}", (P,)),
    ("drop the {obj}", (D,)),
    ("toggle the {obj}", (T,)),
)
PARAPHRASES = (
    ("turn left", "rotate left", "face left", "turn to the left"),
    ("turn right", "rotate right", "face right", "turn to the right"),
    ("go forward", "move forward", "step forward", "walk ahead one step"),
    ("go forward twice", "move forward two steps", "walk ahead 2 steps", "go forward then go forward"),
    ("turn around", "turn left twice", "turn back", "rotate left two times"),
    ("turn left and go forward", "turn left then move forward", "face left and step forward",
     "rotate left, then walk ahead"),
    ("turn right and go forward", "turn right then move forward", "face right and step forward",
     "rotate right, then walk ahead"),
    ("pick up the {obj}", "grab the {obj}", "take the {obj}", "pick the {obj} up"),
    ("drop the {obj}", "put down the {obj}", "put the {obj} down", "release the {obj}"),
    ("toggle the {obj}", "open the {obj}", "use the {obj}", "toggle the {obj} in front"),
)
DEFAULT_LEVELS = ("GoToLocal", "PickupLoc", "PutNextLocal", "UnlockLocal", "GoToObjDoor")
COLOR_WORDS = ("red", "green", "blue", "purple", "yellow", "grey", "gray")
TYPE_WORDS = {"key": "key", "ball": "ball", "box": "box", "door": "door"}
_CLASS_OF = {seq: i for i, (_, seq) in enumerate(ACTIONS)}
_CLASS_OF[(R, R)] = 4  # turning around either way ends in the same state
_FILLERS = {"the", "a", "an", "to", "go", "move", "step", "walk", "one", "in", "front", "of", "you", "it", "please",
            "object", "turn", "rotate", "face", "up", "down", "put", "steps", "step", "times", "time"}
_VERBS = (  # (words that select it, primitive) in priority order
    ({"around", "back"}, "around"),
    ({"pick", "pickup", "grab", "take", "get", "fetch"}, P),
    ({"drop", "release", "put"}, D),
    ({"toggle", "open", "unlock", "close", "use"}, T),
    ({"wait", "stay", "nothing", "noop"}, DONE),
    ({"forward", "forwards", "ahead", "straight", "advance"}, F),
    ({"left"}, L),
    ({"right"}, R),
)
TILE_HI = 16  # minigrid tiles are drawn at this size and area-averaged down
_TILES: dict = {}  # (object encoding, agent direction, tile px) -> tile, shared by every BabyAIWorld


def level_id(name: str) -> str:
    n = name if name.startswith("BabyAI-") else f"BabyAI-{name}"
    return n if n.rsplit("-", 1)[-1].startswith("v") and n.count("-") >= 2 else f"{n}-v0"


def _require_minigrid():
    try:
        import gymnasium  # noqa: F401
        import minigrid  # noqa: F401
    except ImportError as e:  # pragma: no cover - the extra is installed in the project's venv
        raise ConfigError("the babyai world needs the `world` extra (pip install 'jaxlm[world]': minigrid, "
                          f"gymnasium): {e}") from None


def _no_obs():
    return None


class BabyAIWorld(World):
    name = "babyai"

    def __init__(self, frame_size: int = 32, clip_len: int = 4, context_frames: int = 2, *,
                 levels=DEFAULT_LEVELS, policy: str = "mixed", bot_prob: float = 0.5):
        super().__init__(frame_size, clip_len, context_frames)
        _require_minigrid()
        import gymnasium as gym
        import minigrid  # noqa: F401  (registers the BabyAI-* ids)

        if policy not in ("random", "bot", "mixed"):
            raise ConfigError(f"BabyAIWorld: policy={policy!r}; expected 'random', 'bot' or 'mixed'")
        if isinstance(levels, str):
            levels = (levels,)
        self.levels = tuple(level_id(lv) for lv in levels)
        if not self.levels:
            raise ConfigError("BabyAIWorld: levels is empty")
        self.envs = {}
        for lv in self.levels:
            try:
                env = gym.make(lv).unwrapped
            except gym.error.Error as e:
                raise ConfigError(f"BabyAIWorld: unknown level {lv!r} ({e})") from None
            env.gen_obs = _no_obs  # nothing here reads observations (the bot reads the grid): skip their cost
            self.envs[lv] = env
        self.policy, self.bot_prob = policy, float(bot_prob)
        self.action_texts = [t for t, _ in ACTIONS]
        self.action_paraphrases = [list(p) for p in PARAPHRASES]
        self.env = None
        self.bot = None
        self._bot_next = None

    @property
    def mission(self) -> str:
        """The level's natural-language mission of the current episode ("pick up the yellow key")."""
        return self.env.mission if self.env is not None else ""

    def settings(self) -> dict:
        return {**super().settings(), "levels": list(self.levels), "policy": self.policy, "bot_prob": self.bot_prob}

    # ---- state
    def _reset_state(self, seed):
        self.env = self.envs[self.levels[seed % len(self.levels)]]
        with contextlib.redirect_stdout(io.StringIO()):  # minigrid prints its rejected layouts
            self.env.reset(seed=seed)
        room = self.env.room_from_pos(*self.env.agent_pos)
        (self.x0, self.y0), (self.w, self.h) = room.top, room.size
        if self.frame_size < max(self.w, self.h):
            raise ConfigError(f"BabyAIWorld: frame_size={self.frame_size} is smaller than the room's "
                              f"{self.w}x{self.h} cells")
        self.tile = self.frame_size // max(self.w, self.h)
        self.mission_status = None  # "success" / "failure" once the level's mission is decided
        self._start_bot()

    def _start_bot(self):
        self.bot, self._bot_next = None, None
        if self.policy == "random":
            return
        from minigrid.utils.baby_ai_bot import BabyAIBot

        try:
            self.bot = BabyAIBot(self.env)
            self._bot_next = int(self.bot.replan())
        except Exception:  # noqa: BLE001 - a mission the bot cannot plan: random actions instead
            self.bot = None

    def _tile(self, obj, agent_dir):
        key = (obj.encode() if obj is not None else None, agent_dir, self.tile)
        t = _TILES.get(key)
        if t is None:
            from minigrid.core.grid import Grid

            k = -(-TILE_HI // self.tile)
            hi = Grid.render_tile(obj, agent_dir=agent_dir, highlight=False, tile_size=self.tile * k, subdivs=3)
            t = hi.reshape(self.tile, k, self.tile, k, 3).mean((1, 3)).round().astype(np.uint8)
            _TILES[key] = t
        return t

    def _render(self):
        env, c = self.env, self.tile
        f = np.zeros((self.frame_size, self.frame_size, 3), np.uint8)
        oy = (self.frame_size - self.h * c) // 2
        ox = (self.frame_size - self.w * c) // 2
        ax, ay = env.agent_pos
        for j in range(self.h):
            for i in range(self.w):
                x, y = self.x0 + i, self.y0 + j
                d = env.agent_dir if (x == ax and y == ay) else None
                f[oy + j * c:oy + (j + 1) * c, ox + i * c:ox + (i + 1) * c] = self._tile(env.grid.get(x, y), d)
        return f

    # ---- actions
    def _clause(self, clause: str, text: str) -> list:
        words = clause.split()
        ws = set(words)
        kind = next((k for sel, k in _VERBS if ws & sel), None)
        if kind is None:
            raise ActionError(f"babyai: no action in {clause!r} of {text!r} (turn left/right/around, go forward, "
                              f"pick up, drop, toggle/open)")
        color = typ = None
        for w in words:
            if w in COLOR_WORDS:
                color = "grey" if w == "gray" else w
            elif w in TYPE_WORDS:
                typ = TYPE_WORDS[w]
            elif not (w in _FILLERS or any(w in sel for sel, _ in _VERBS)):
                raise ActionError(f"babyai: unknown word {w!r} in action {text!r}")
        if kind == "around":
            return [(R if "right" in ws else L, None)] * 2
        if (color or typ) and kind not in (P, D, T):
            raise ActionError(f"babyai: clause {clause!r} of {text!r} names an object but does not act on one")
        return [(kind, (color, typ) if kind in (P, D, T) else None)]

    def _parse(self, text):
        return parse_steps(text, self._clause, "babyai")

    def class_of(self, steps):
        return _CLASS_OF.get(tuple(a for a, _ in steps), -1)

    @staticmethod
    def _matches(obj, desc) -> bool:
        if desc is None or obj is None:
            return obj is not None
        color, typ = desc
        return (color is None or obj.color == color) and (typ is None or obj.type == typ)

    def _prim(self, action: int, desc) -> None:
        env = self.env
        if action == P or action == T:
            if desc is not None and not self._matches(env.grid.get(*env.front_pos), desc):
                action = DONE
        elif action == D and desc is not None and not self._matches(env.carrying, desc):
            action = DONE
        _, reward, terminated, _, _ = env.step(action)
        if terminated and self.mission_status is None:
            self.mission_status = "success" if reward > 0 else "failure"
        if self.bot is not None:
            try:
                self._bot_next = int(self.bot.replan(action))
            except Exception:  # noqa: BLE001 - e.g. DisappearedBoxError: the bot gave up, random from now on
                self.bot, self._bot_next = None, None

    def _run(self, steps):
        frames = []
        for action, desc in steps:
            self._prim(action, desc)
            frames.append(self._render())
        return frames

    # ---- generation
    @staticmethod
    def _obj_name(obj) -> str:
        return "object" if obj is None else f"{obj.color} {obj.type}"

    def _free(self, pos) -> bool:
        cell = self.env.grid.get(*pos)
        return cell is None or cell.can_overlap()

    def _feasible(self) -> list[int]:
        """Action classes that change the state here."""
        env = self.env
        pos, fwd = np.asarray(env.agent_pos), np.asarray(env.dir_vec)
        right = np.asarray(env.right_vec)
        front = env.grid.get(*env.front_pos)
        ok = [0, 1, 4]
        if self._free(pos + fwd):
            ok.append(2)
            if self._free(pos + 2 * fwd):
                ok.append(3)
        if self._free(pos - right):
            ok.append(5)
        if self._free(pos + right):
            ok.append(6)
        if front is not None and front.can_pickup() and env.carrying is None:
            ok.append(7)
        if front is None and env.carrying is not None:
            ok.append(8)
        if front is not None and front.type in ("door", "box"):
            locked = front.type == "door" and front.is_locked
            if not locked or (env.carrying is not None and env.carrying.type == "key"
                              and env.carrying.color == front.color):
                ok.append(9)
        return ok

    def _text(self, cls: int, rng) -> str:
        env = self.env
        phr = PARAPHRASES[cls][int(rng.integers(len(PARAPHRASES[cls])))]
        if "{obj}" in phr:
            obj = env.carrying if cls == 8 else env.grid.get(*env.front_pos)
            phr = phr.format(obj=self._obj_name(obj))
        return phr

    def _bot_class(self) -> int | None:
        """The class of the bot's next one or two actions (a look-ahead on a copy of the env and bot)."""
        a1 = self._bot_next
        if self.bot is None or a1 is None or a1 == DONE:
            return None
        if a1 in (F, L, R):  # look one step ahead: a copy of the bot on the env moved by a1, then restored
            from minigrid.minigrid_env import MiniGridEnv

            env = self.env
            saved = (env.agent_pos, env.agent_dir, env.step_count)
            try:
                bot2 = copy.deepcopy(self.bot, {id(env): env})
                MiniGridEnv.step(env, a1)  # F/L/R move the agent only (no mission verifier update)
                a2 = int(bot2.replan(a1))
            except Exception:  # noqa: BLE001
                a2 = None
            finally:
                env.agent_pos, env.agent_dir, env.step_count = saved
            if (a1, a2) in _CLASS_OF:
                return _CLASS_OF[(a1, a2)]
        return _CLASS_OF.get((a1,))

    def _sample_action(self, rng):
        cls = None
        if self.policy == "bot" or (self.policy == "mixed" and rng.random() < self.bot_prob):
            cls = self._bot_class()
        return self._random_action(rng) if cls is None else self._text(cls, rng)

    def _random_action(self, rng):
        ok = self._feasible()
        return self._text(ok[int(rng.integers(len(ok)))], rng)


__all__ = ["BabyAIWorld", "ACTIONS", "PARAPHRASES", "DEFAULT_LEVELS", "level_id"]
