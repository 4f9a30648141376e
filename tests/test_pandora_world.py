"""Pandora's worlds and data: episodes are a pure function of the seed, rounds chain (round k starts from the last
frames of round k-1), free-text actions do what they say or raise ActionError naming the text, held-out seeds are
never drawn for training, and the transition pipeline resumes exactly."""

import numpy as np
import pytest

from jaxlm.errors import ConfigError, DataError, JaxlmError, ShapeError
from jaxlm.io.tokenizer import ByteTokenizer
from jaxlm.pandora import HELDOUT_SEEDS, TRAIN_SEEDS, ActionError, check_frames, make_world
from jaxlm.pandora.pipeline import TransitionPipeline, frames_to_float, frames_to_uint8, heldout_batches
from jaxlm.pandora.world import MAX_ACTION_CHARS, split_clauses, spread

_WORLDS = {}


def world(name, **kw):
    key = (name, tuple(sorted(kw.items())))
    if key not in _WORLDS:
        _WORLDS[key] = make_world(name, **kw)
    return _WORLDS[key]


def _same(ep1, ep2):
    return all(a.action == b.action and a.action_id == b.action_id and np.array_equal(a.before, b.before)
               and np.array_equal(a.after, b.after) for a, b in zip(ep1, ep2))


@pytest.mark.parametrize("name", ["sprites", "babyai"])
def test_episodes_are_deterministic_per_seed_and_rounds_chain(name):
    w = world(name)
    ep = w.episode(11, 3)
    assert [t.round for t in ep] == [0, 1, 2] and all(t.seed == 11 for t in ep)
    for t in ep:
        assert t.before.shape == (2, 32, 32, 3) and t.after.shape == (4, 32, 32, 3)
        assert t.before.dtype == t.after.dtype == np.uint8
        assert 0 <= t.action_id < w.n_classes and isinstance(t.action, str) and t.action
    for prev, nxt in zip(ep, ep[1:]):  # round k's state is the end of round k-1's clip
        np.testing.assert_array_equal(nxt.before, prev.after[-2:])
    np.testing.assert_array_equal(ep[0].before[0], ep[0].before[1])  # the start: the initial frame repeated
    assert _same(ep, w.episode(11, 3))                                # same seed, same episode
    other = w.episode(12, 3)
    assert not np.array_equal(other[0].before, ep[0].before)          # another seed, another layout
    # the given actions replay the generated episode exactly (text -> clip is the simulator)
    assert _same(ep, w.episode(11, 3, actions=[t.action for t in ep]))
    # interactive use is the same thing
    np.testing.assert_array_equal(w.reset(11), ep[0].before)
    np.testing.assert_array_equal(w.step(ep[0].action), ep[0].after)


def test_sprite_actions_move_the_named_object():
    w = world("sprites")
    w.reset(3)
    red = next(i for i, o in enumerate(w.objects) if o["color"] == "red")
    x, y = w.objects[red]["cell"]
    clip = w.step(f"move the red {w.objects[red]['shape']} up")
    assert w.objects[red]["cell"] == (x, max(y - 1, 0)) and w.last_action_id == 2  # red=0, up=2
    assert not np.array_equal(clip[0], clip[-1]) or y == 0                         # smooth motion over the clip
    w.step("push the red one to the right twice")
    assert w.last_action_id == 1
    w.step("move the red one left and the red one up")  # a compound is not one class
    assert w.last_action_id == -1
    for _ in range(3):
        w.step("move the red one left three times")
    assert w.objects[red]["cell"][0] >= 0  # stops at the border (or before another object)


def test_babyai_actions_are_composed_of_primitive_steps():
    w = world("babyai")
    w.reset(0)
    env = w.env
    d0, p0 = env.agent_dir, tuple(env.agent_pos)
    w.step("turn left")
    assert env.agent_dir == (d0 - 1) % 4 and w.last_action_id == 0
    w.step("turn right twice then rotate left")
    assert env.agent_dir == d0 and tuple(env.agent_pos) == p0 and w.last_action_id == -1
    w.step("turn around")
    assert env.agent_dir == (d0 + 2) % 4 and w.last_action_id == 4
    front = env.grid.get(*env.front_pos)
    w.step("pick up the purple box" if front is None or front.color != "purple" else "pick up the green key")
    assert env.carrying is None  # nothing matching in front: the step is a no-op, as in the simulator
    assert split_clauses("go forward twice and turn left") == [("go forward", 2), ("turn left", 1)]
    assert spread([1, 2], 4) == [1, 1, 2, 2] and spread([1, 2, 3, 4, 5, 6, 7, 8], 4) == [2, 4, 6, 8]


@pytest.mark.parametrize("name,text,match", [
    ("sprites", "", "empty action"),
    ("sprites", "   ", "empty action"),
    ("sprites", "move the red one left " * 12, f"more than {MAX_ACTION_CHARS}"),
    ("sprites", "move the red one left 7 times and the red one up twice", "more than 8 primitive steps"),
    ("sprites", "fly the red one to the moon", "unknown word 'fly'"),
    ("sprites", "move the square left", "names no object colour"),
    ("sprites", "move the red one", "names no direction"),
    ("babyai", "dance", "no action in 'dance'"),
    ("babyai", "go forward to the spaceship", "unknown word 'spaceship'"),
    ("babyai", "turn left the key", "names an object but does not act on one"),
])
def test_bad_actions_raise_action_errors_naming_the_text(name, text, match):
    w = world(name)
    w.reset(5)
    with pytest.raises(ActionError, match=match) as e:
        w.step(text)
    assert isinstance(e.value, JaxlmError) and (repr(text.strip()[:20])[1:-1] in str(e.value) or not text.strip())


def test_sprite_objects_must_be_in_the_scene_and_match_their_shape():
    w = world("sprites")
    w.reset(3)
    missing = next(c for c in ("red", "green", "blue", "yellow") if c not in [o["color"] for o in w.objects])
    with pytest.raises(ActionError, match=f"names the {missing} object"):
        w.step(f"move the {missing} one left")
    o = w.objects[0]
    wrong = next(s for s in ("square", "ball", "cross") if s != o["shape"])
    with pytest.raises(ActionError, match=f"is a {o['shape']}"):
        w.step(f"move the {o['color']} {wrong} left")
    with pytest.raises(ActionError, match="not a string|must be a string"):
        w.step(None)
    with pytest.raises(ConfigError, match="unknown world"):
        make_world("atari")
    with pytest.raises(ConfigError, match="frame_size"):
        make_world("sprites", frame_size=4)


def test_frames_are_checked_and_converted():
    f = np.zeros((2, 32, 32, 3), np.uint8)
    assert check_frames(f, 32) is not None
    for bad, msg in ((np.zeros((2, 16, 16, 3), np.uint8), r"\(2, 16, 16, 3\)"),
                     (np.zeros((2, 32, 32, 4), np.uint8), r"\(2, 32, 32, 4\)"),
                     (np.zeros((2, 32, 32, 3), np.float32), "float32")):
        with pytest.raises(ShapeError, match=msg):
            check_frames(bad, 32, "before")
    with pytest.raises(ShapeError, match="expected 4 frames"):
        check_frames(f, 32, length=4)
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    y = frames_to_float(x)
    assert y.dtype == np.float32 and y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_array_equal(frames_to_uint8(y), x)


def test_heldout_seeds_are_disjoint_and_never_drawn_for_training():
    assert HELDOUT_SEEDS and not set(HELDOUT_SEEDS) & set(range(TRAIN_SEEDS.start, TRAIN_SEEDS.stop, 997))
    assert min(HELDOUT_SEEDS) >= TRAIN_SEEDS.stop
    pipe = TransitionPipeline(world("sprites"), ByteTokenizer(), batch=4, max_action_len=48, seed=3)
    b = pipe.next()
    assert all(TRAIN_SEEDS.start <= s < TRAIN_SEEDS.stop for s in b["env_seed"])
    ev = heldout_batches(world("sprites"), ByteTokenizer(), batch=4, n_batches=2, max_action_len=48)
    assert len(ev) == 2 and all(s in HELDOUT_SEEDS for e in ev for s in e["env_seed"])
    ev2 = heldout_batches(world("sprites"), ByteTokenizer(), batch=4, n_batches=2, max_action_len=48)
    np.testing.assert_array_equal(ev[1]["after"], ev2[1]["after"])  # fixed


def test_transition_pipeline_batches_and_exact_resume():
    w = world("sprites")
    tok = ByteTokenizer()
    pipe = TransitionPipeline(w, tok, batch=4, max_action_len=48, seed=1, max_round=3)
    b0, b1, b2 = pipe.next(), pipe.next(), pipe.next()
    assert b0["before"].shape == (4, 2, 32, 32, 3) and b0["after"].shape == (4, 4, 32, 32, 3)
    assert b0["before"].dtype == np.float32 and -1.0 <= b0["before"].min() and b0["after"].max() <= 1.0
    assert b0["action_ids"].shape == b0["action_mask"].shape == (4, 48) and b0["action_ids"].dtype == np.int32
    assert b0["action_class"].dtype == np.int32 and b0["action_class"].shape == (4,)
    for i, text in enumerate(b0["action_text"]):  # tokens are the text's bytes, right-padded, masked
        n = int(b0["action_mask"][i].sum())
        assert tok.decode(b0["action_ids"][i, :n]) == text and not b0["action_mask"][i, n:].any()
    # example i of step s is round r of episode e, all drawn from default_rng([seed, s, i])
    rng = np.random.default_rng([1, 0, 0])
    e, r = int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop)), int(rng.integers(3))
    assert (e, r) == (int(b0["env_seed"][0]), int(b0["round"][0]))
    np.testing.assert_array_equal(frames_to_uint8(b0["after"][0]), w.episode(e, r + 1, rng)[-1].after)
    state = {"step": 1, **pipe.identity()}
    resumed = TransitionPipeline(w, tok, batch=4, max_action_len=48, seed=1, max_round=3)
    resumed.set_state(state)
    for want in (b1, b2):
        got = resumed.next()
        for k in ("before", "after", "action_ids", "action_mask", "action_class", "env_seed", "round"):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    other = TransitionPipeline(w, tok, batch=4, max_action_len=48, seed=2, max_round=3)
    with pytest.raises(ConfigError, match="seed"):
        other.set_state(state)
    assert not np.array_equal(other.batch_at(1)["after"], b1["after"])
    with pytest.raises(DataError, match="longer than max_action_len=4"):
        TransitionPipeline(w, tok, batch=2, max_action_len=4).next()


def test_babyai_bot_policy_carries_out_the_level_missions():
    w = world("babyai", policy="bot")
    done = []
    for s in HELDOUT_SEEDS[:5]:  # one episode per default level
        ep = w.episode(s, 16)
        assert w.mission and all(t.action_id >= 0 for t in ep)  # the bot's plan cut into action classes
        done.append(w.mission_status)
    assert done == ["success"] * 5
