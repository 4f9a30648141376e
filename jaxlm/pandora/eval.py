"""Evaluating a Pandora world model against its simulator on held-out seeds.

    from jaxlm.pandora import make_world, HELDOUT_SEEDS
    from jaxlm.pandora.eval import evaluate, copy_last_frame, psnr, ssim
    from jaxlm.pandora.idm import train_idm
    world = make_world("sprites")
    idm = train_idm(world, "runs/idm")                       # inverse-dynamics classifier on real clips
    base = evaluate(copy_last_frame(world), world, HELDOUT_SEEDS[:32], n_rounds=4, idm=idm)
    ours = evaluate(model_predict, world, HELDOUT_SEEDS[:32], n_rounds=4, idm=idm)

`predict_fn(before, actions, seed) -> after`: before (B, Tb, H, W, 3) uint8, actions a list of B texts, seed an int
(the sampling seed: the same seed and inputs must give the same clip); after (B, Ta, H, W, 3) uint8.
`evaluate` returns (all means over the seeds; PSNR in dB, capped at PSNR_MAX; SSIM per frame and channel):

    next_psnr, next_ssim         next clip from the TRUE state, every round of the episodes (teacher forcing)
    rollout_psnr, rollout_ssim   per round [n_rounds]: the model's own clips fed back as the next state
    action_acc                   the IDM's accuracy on the model's next clips (do they show the action?)
    idm_acc_true                 the IDM's accuracy on the simulator's clips of the same rounds (its ceiling)
    cf_diff_actions              mean |clip(a) - clip(a')| (pixel levels 0..255) from the same state and seed for
                                 two actions of different classes (must be large)
    cf_diff_seeds                mean |clip(a, seed s) - clip(a, seed s')| (must be small)
    cf_diff_true                 the simulator's own |clip(a) - clip(a')| for the same pairs (reference)
    cf_ratio                     cf_diff_actions / max(cf_diff_seeds, 1e-6); n_seeds, n_rounds

The copy-the-last-frame baseline (`copy_last_frame`) goes through the same function; its cf_diff_actions is 0.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from jaxlm.errors import ConfigError, ShapeError
from jaxlm.pandora.world import World, check_frames

PSNR_MAX = 100.0  # dB, the value of identical frames
SSIM_WIN, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _pair(a, b, where: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim < 3 or a.shape[-1] not in (1, 3):
        raise ShapeError(f"{where}: expected two (..., H, W, C) arrays of the same shape, got {a.shape} and {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a, b, data_range: float = 255.0) -> np.ndarray:
    """Peak signal-to-noise ratio (dB) per image over the last three axes (H, W, C): 10 log10(range^2 / MSE),
    PSNR_MAX where the images are identical."""
    a, b = _pair(a, b, "psnr")
    mse = ((a - b) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(data_range ** 2 / mse)
    return np.minimum(out, PSNR_MAX)


def _gauss1d(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def gaussian_window(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 2-D Gaussian window of Wang et al. (2004): size x size, standard deviation sigma."""
    g = _gauss1d(size, sigma)
    return np.outer(g, g)


def _band(n: int, g1: np.ndarray) -> np.ndarray:
    """The (n - k + 1, n) matrix of 'valid' correlation with the 1-D window g1."""
    k = len(g1)
    m = np.zeros((n - k + 1, n))
    for i in range(n - k + 1):
        m[i, i:i + k] = g1
    return m


def _filter_valid(x: np.ndarray, mh: np.ndarray, mw: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filtering of x [..., C, H, W] (two matrix products)."""
    return mh @ x @ mw.T


def ssim(a, b, data_range: float = 255.0, win: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) per image over (H, W, C): the mean SSIM map
    over the 'valid' positions of a win x win Gaussian window (sigma 1.5), each channel separately, K1 = 0.01,
    K2 = 0.03, population (weighted) moments; images smaller than the window are a ShapeError."""
    a, b = _pair(a, b, "ssim")
    if a.shape[-3] < win or a.shape[-2] < win:
        raise ShapeError(f"ssim: images {a.shape[-3]}x{a.shape[-2]} are smaller than the {win}x{win} window")
    g1 = _gauss1d(win, sigma)
    mh, mw = _band(a.shape[-3], g1), _band(a.shape[-2], g1)
    a, b = np.moveaxis(a, -1, -3), np.moveaxis(b, -1, -3)  # [..., C, H, W]
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    f = lambda x: _filter_valid(x, mh, mw)  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    var_a = f(a * a) - mu_a ** 2
    var_b = f(b * b) - mu_b ** 2
    cov = f(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return m.mean(axis=(-3, -2, -1))


def clip_metrics(pred, true) -> dict:
    """Mean PSNR and SSIM over every frame of (B, T, H, W, 3) clips."""
    return {"psnr": float(np.mean(psnr(pred, true))), "ssim": float(np.mean(ssim(pred, true)))}


def copy_last_frame(world: World) -> Callable:
    """The baseline predict_fn: the next clip is the last frame of the state, repeated clip_len times."""
    T = world.clip_len

    def predict(before, actions, seed):
        b = np.asarray(before)
        return np.repeat(b[:, -1:], T, axis=1)

    predict.__name__ = "copy_last_frame"
    return predict


def _predict(fn, before, actions, seed, world, where) -> np.ndarray:
    out = fn(before, list(actions), int(seed))
    return check_frames(out, world.frame_size, f"{where} (predict_fn output)", length=world.clip_len).reshape(
        (len(actions), world.clip_len, world.frame_size, world.frame_size, 3))


def evaluate(predict_fn: Callable, world: World, seeds: Sequence[int], n_rounds: int = 4, *, idm=None,
             batch: int = 16, sample_seed: int = 0, alt_seed: int = 1) -> dict:
    """Next-clip PSNR/SSIM (teacher forced), per-round PSNR/SSIM of an n_rounds rollout, action following by
    `idm` (an `jaxlm.pandora.idm.IDM`, or None to skip) and counterfactual divergence of `predict_fn` on the
    episodes of `seeds` (see the module docstring for the keys). Deterministic for a deterministic predict_fn."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("evaluate: no seeds")
    if isinstance(n_rounds, bool) or not isinstance(n_rounds, int) or n_rounds < 1:
        raise ConfigError(f"evaluate: n_rounds must be a positive integer, got {n_rounds!r}")
    episodes = [world.episode(s, n_rounds) for s in seeds]
    Tb = world.context_frames
    nxt_p, nxt_s, roll_p, roll_s = [], [], [[] for _ in range(n_rounds)], [[] for _ in range(n_rounds)]
    acc_pred, acc_true = [], []
    cf_a, cf_s, cf_t = [], [], []
    for lo in range(0, len(seeds), batch):
        eps = episodes[lo:lo + batch]
        B = len(eps)
        # teacher forced: every round from the true state
        for k in range(n_rounds):
            before = np.stack([e[k].before for e in eps])
            true = np.stack([e[k].after for e in eps])
            pred = _predict(predict_fn, before, [e[k].action for e in eps], sample_seed, world, "evaluate")
            nxt_p.append(psnr(pred, true).mean(1))
            nxt_s.append(ssim(pred, true).mean(1))
            if idm is not None:
                cls = np.asarray([e[k].action_id for e in eps])
                ok = cls >= 0
                acc_pred.append((idm.predict(before, pred) == cls)[ok])
                acc_true.append((idm.predict(before, true) == cls)[ok])
            if k == 0:
                first = pred
        # rollout: the model's clips fed back
        hist = np.stack([e[0].before for e in eps])
        for k in range(n_rounds):
            true = np.stack([e[k].after for e in eps])
            pred = first if k == 0 else _predict(predict_fn, hist[:, -Tb:], [e[k].action for e in eps],
                                                 sample_seed, world, "evaluate (rollout)")
            roll_p[k].append(psnr(pred, true).mean(1))
            roll_s[k].append(ssim(pred, true).mean(1))
            hist = np.concatenate([hist, pred], axis=1)[:, -Tb:]
        # counterfactuals from the initial state
        before = np.stack([e[0].before for e in eps])
        acts = [e[0].action for e in eps]
        alts = [world.alternative_action(s, a, np.random.default_rng([s, 7])) for s, a in zip(seeds[lo:lo + B], acts)]
        pa = first
        pb = _predict(predict_fn, before, alts, sample_seed, world, "evaluate (counterfactual)")
        ps = _predict(predict_fn, before, acts, alt_seed, world, "evaluate (second seed)")
        true_b = np.stack([world.episode(s, 1, actions=[a])[0].after for s, a in zip(seeds[lo:lo + B], alts)])
        true_a = np.stack([e[0].after for e in eps])
        mad = lambda x, y: np.abs(x.astype(np.float64) - y.astype(np.float64)).mean(axis=(1, 2, 3, 4))  # noqa: E731
        cf_a.append(mad(pa, pb))
        cf_s.append(mad(pa, ps))
        cf_t.append(mad(true_a, true_b))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    out = {"next_psnr": float(cat(nxt_p).mean()), "next_ssim": float(cat(nxt_s).mean()),
           "rollout_psnr": [float(cat(r).mean()) for r in roll_p],
           "rollout_ssim": [float(cat(r).mean()) for r in roll_s],
           "cf_diff_actions": float(cat(cf_a).mean()), "cf_diff_seeds": float(cat(cf_s).mean()),
           "cf_diff_true": float(cat(cf_t).mean()), "n_seeds": len(seeds), "n_rounds": n_rounds}
    out["cf_ratio"] = out["cf_diff_actions"] / max(out["cf_diff_seeds"], 1e-6)
    if idm is not None:
        a, t = cat(acc_pred), cat(acc_true)
        out["action_acc"] = float(a.mean()) if a.size else math.nan
        out["idm_acc_true"] = float(t.mean()) if t.size else math.nan
    return out


def format_table(rows: dict[str, dict]) -> str:
    """A markdown table of evaluate() results, one row per model name."""
    head = ("| model | next PSNR | next SSIM | rollout PSNR per round | action acc (IDM) | cf diff actions | "
            "cf diff seeds |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for name, r in rows.items():
        roll = " / ".join(f"{v:.1f}" for v in r["rollout_psnr"])
        acc = f"{r['action_acc']:.3f}" if "action_acc" in r else "-"
        lines.append(f"| {name} | {r['next_psnr']:.2f} | {r['next_ssim']:.3f} | {roll} | {acc} | "
                     f"{r['cf_diff_actions']:.2f} | {r['cf_diff_seeds']:.2f} |")
    return "\n".join(lines)


__all__ = ["psnr", "ssim", "gaussian_window", "clip_metrics", "copy_last_frame", "evaluate", "format_table",
           "PSNR_MAX"]
