"""Pandora's evaluation: PSNR and SSIM against their textbook formulas (an explicit per-window loop for SSIM, Wang et
al. 2004), and `evaluate` on the sprite world with a simulator oracle (perfect clips, follows every action, diverges
exactly as the simulator) and the copy-the-last-frame baseline (ignores actions: no divergence, chance following)."""

import math

import numpy as np
import pytest

from jaxlm.errors import ShapeError
from jaxlm.pandora import HELDOUT_SEEDS, make_world
from jaxlm.pandora.eval import PSNR_MAX, copy_last_frame, evaluate, format_table, gaussian_window, psnr, ssim
from jaxlm.pandora.sprites import COLORS, DIRS


def psnr_ref(a, b):
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_MAX if mse == 0 else min(10 * math.log10(255.0 ** 2 / mse), PSNR_MAX)


def ssim_ref(a, b, win=11, sigma=1.5):
    """Wang et al. (2004), eq. 13 with Gaussian-weighted statistics, one window at a time, channel by channel."""
    w = np.array([[math.exp(-((i - 5) ** 2 + (j - 5) ** 2) / (2 * sigma ** 2)) for j in range(win)]
                  for i in range(win)])
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(a.shape[-1]):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        for i in range(x.shape[0] - win + 1):
            for j in range(x.shape[1] - win + 1):
                px, py = x[i:i + win, j:j + win], y[i:i + win, j:j + win]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_and_ssim_match_the_reference_formulas():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)  # a noisy copy
    c = rng.integers(0, 256, a.shape).astype(np.uint8)                                    # unrelated
    for x, y in ((a, b), (a, c), (b, c)):
        np.testing.assert_allclose(psnr(x, y), [psnr_ref(p, q) for p, q in zip(x, y)], rtol=1e-12)
        np.testing.assert_allclose(ssim(x, y), [ssim_ref(p, q) for p, q in zip(x, y)], rtol=1e-9, atol=1e-12)
    assert np.all(psnr(a, a) == PSNR_MAX) and np.allclose(ssim(a, a), 1.0)
    assert np.all(ssim(a, b) > ssim(a, c)) and np.all(psnr(a, b) > psnr(a, c))
    np.testing.assert_allclose(ssim(a, b), ssim(b, a))
    g = gaussian_window()
    assert g.shape == (11, 11) and abs(g.sum() - 1) < 1e-12 and g[5, 5] == g.max()
    with pytest.raises(ShapeError, match="smaller than the 11x11 window"):
        ssim(a[:, :8, :8], b[:, :8, :8])
    with pytest.raises(ShapeError, match="same shape"):
        psnr(a, b[:2])


class Oracle:
    """predict_fn from the simulator: finds the episode and actions that led to `before` and replays them."""

    def __init__(self, world, seeds, n_rounds):
        self.w = make_world("sprites")
        self.ctx = {}
        for s in seeds:
            ep = world.episode(s, n_rounds)
            for k, t in enumerate(ep):
                self.ctx[t.before.tobytes()] = (s, [x.action for x in ep[:k]])

    def __call__(self, before, actions, seed):
        out = []
        for b, a in zip(before, actions):
            s, prefix = self.ctx[b.tobytes()]
            out.append(self.w.episode(s, len(prefix) + 1, actions=prefix + [a])[-1].after)
        return np.stack(out)


class SpriteIDM:
    """An exact inverse-dynamics model of the sprite world: the colour whose pixels moved most, and which way."""

    def predict(self, before, after):
        out = []
        for b, a in zip(before, after):
            best = (0.0, 0)
            for ci, rgb in enumerate(COLORS.values()):
                m0, m1 = np.all(b[-1] == rgb, -1), np.all(a[-1] == rgb, -1)
                if not m0.any() or not m1.any():
                    continue
                (y0, x0), (y1, x1) = np.argwhere(m0).mean(0), np.argwhere(m1).mean(0)
                dx, dy = x1 - x0, y1 - y0
                if max(abs(dx), abs(dy)) > best[0]:
                    d = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
                    best = (max(abs(dx), abs(dy)), ci * len(DIRS) + list(DIRS).index(d))
            out.append(best[1])
        return np.asarray(out)


def test_evaluate_scores_an_oracle_perfectly_and_the_copy_baseline_as_ignoring_actions():
    world = make_world("sprites")
    seeds = HELDOUT_SEEDS[:6]
    idm = SpriteIDM()
    oracle = evaluate(Oracle(world, seeds, 3), world, seeds, n_rounds=3, idm=idm, batch=4)
    assert oracle["next_psnr"] == PSNR_MAX and oracle["rollout_psnr"] == [PSNR_MAX] * 3
    assert oracle["next_ssim"] == pytest.approx(1.0) and oracle["rollout_ssim"] == pytest.approx([1.0] * 3)
    assert oracle["action_acc"] == oracle["idm_acc_true"] == 1.0
    assert oracle["cf_diff_seeds"] == 0.0 and oracle["cf_diff_actions"] == oracle["cf_diff_true"] > 0
    base = evaluate(copy_last_frame(world), world, seeds, n_rounds=3, idm=idm, batch=4)
    assert base["next_psnr"] < 40 and base["next_ssim"] < 1.0 and base["idm_acc_true"] == 1.0
    assert base["action_acc"] <= 0.25 and base["cf_diff_actions"] == base["cf_diff_seeds"] == 0.0
    assert base["cf_diff_true"] == oracle["cf_diff_true"]
    assert base == evaluate(copy_last_frame(world), world, seeds, n_rounds=3, idm=idm, batch=6)  # deterministic
    table = format_table({"oracle": oracle, "copy last frame": base})
    assert table.count("\n") == 3 and "| copy last frame |" in table

    def bad(before, actions, seed):
        return np.zeros((len(actions), 4, 16, 16, 3), np.uint8)

    with pytest.raises(ShapeError, match="predict_fn output"):
        evaluate(bad, world, seeds[:2], n_rounds=1)


def test_idm_predicts_one_class_per_clip_and_checks_its_input():
    import jax
    from flax import nnx

    from jaxlm.pandora.idm import IDM, IDMNet, chance_accuracy, stack

    world = make_world("sprites", frame_size=16, grid=4, n_objects=2)
    ts = world.episode(HELDOUT_SEEDS[0], 3)
    # small random weights without compiling an initialiser (the trained path is the slow test below)
    g, st = nnx.split(nnx.eval_shape(lambda: IDMNet(6, world.n_classes, width=4, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    st = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), st)
    idm = IDM(nnx.merge(g, st), world.settings(), 16, world.n_classes)
    d = stack(ts)
    got = idm.predict(d["before"], d["after"], batch=2)
    assert got.shape == (3,) and all(0 <= g < world.n_classes for g in got)
    assert 0.0 <= idm.accuracy(ts) <= 1.0 and chance_accuracy([1, 1, 2, -1]) == 2 / 3
    with pytest.raises(ShapeError, match="IDM.predict after"):
        idm.predict(d["before"], d["after"][..., :1])


@pytest.mark.slow
def test_idm_learns_real_clips_and_a_shuffled_label_idm_stays_at_chance(tmp_path):
    from jaxlm.pandora.idm import chance_accuracy, stack, train_idm, train_transitions
    from jaxlm.pandora.pipeline import heldout_transitions

    world = make_world("sprites", frame_size=16, grid=4, n_objects=2)
    held = heldout_transitions(world, 256, n_rounds=4)
    chance = chance_accuracy(stack(held)["action_class"])
    data = stack(train_transitions(world, 1024))
    kw = dict(data=data, steps=150, batch=32, width=8, lr=3e-3)
    real = train_idm(world, tmp_path / "real", **kw).accuracy(held)
    shuffled = train_idm(world, tmp_path / "shuffled", shuffle_labels=True, **kw).accuracy(held)
    assert real > 0.6 and real > 4 * chance
    assert shuffled < chance + 0.08
