"""Latent-diffusion probes: a small diffusion model (jaxlm.diffusion, trained on the shared engine) on images whose
content follows a known concept hierarchy, and three probes of which concept is decided at which noise level.

Images (`concept_images`): 12x12 grey images drawn from a DiscreteBN over
    shape (2 states, high level: a horizontal or a vertical bar across the image)
      -> offset (3 states: where the bar sits), width (2 states: 2 or 3 pixels), dot (4 states: a 2x2 dot in one
         corner; small and local)
with a continuous nuisance (overall intensity) and pixel noise. `shape` is the global, high-level concept; the
others are its children, and `dot` is the most local.

Probes (the three the issue asks for):
  (a) `probe_accuracy`: for each noise level t, logistic-regression accuracy of every concept from x_t and from
      the denoiser's hidden features at (x_t, t);
  (b) `switch_condition`: DDIM sampling conditioned on shape a, switched to shape b at step s; the share of
      samples whose final shape is b (the shape classifier is trained on clean images);
  (c) `perturb_at`: a deterministic DDIM trajectory and the same trajectory with x_s perturbed at step s: the
      changed-area ratio of the final image and the share of samples whose shape changed.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.concepts.dgp import DiscreteBN
from jaxlm.concepts.errors import ConceptDataError
from jaxlm.concepts.graphs import _spec
from jaxlm.diffusion import (classifier_free_guidance, diffusion_loss, make_schedule, q_sample, sample,
                             sampling_timesteps)
from jaxlm.nn.linear import Linear
from jaxlm.nn.time import timestep_embedding
from jaxlm.train.task import Task

SIDE = 12
CONCEPTS = ("shape", "offset", "width", "dot")
LEVEL = {"shape": "high", "offset": "low", "width": "low", "dot": "low"}


def image_hierarchy():
    """The LatentDAG of the image concepts: shape -> offset, width, dot (all observed: they are the labels)."""
    return _spec({"shape": (2, ["offset", "width", "dot"])}, obs_card={"offset": 3, "width": 2, "dot": 4})


def render(codes, intensity) -> np.ndarray:
    """Images (n, SIDE*SIDE) in [-1, 1] from concept codes (n, 4) in CONCEPTS order and intensities (n,)."""
    codes = np.asarray(codes)
    n = codes.shape[0]
    img = np.zeros((n, SIDE, SIDE), np.float32)
    for i, (shape, offset, width, dot) in enumerate(codes):
        lo = 2 + 3 * int(offset)
        sl = slice(lo, lo + 2 + int(width))
        if shape == 0:
            img[i, sl, 1:SIDE - 1] = 1.0
        else:
            img[i, 1:SIDE - 1, sl] = 1.0
        r, c = divmod(int(dot), 2)
        img[i, r * (SIDE - 2):r * (SIDE - 2) + 2, c * (SIDE - 2):c * (SIDE - 2) + 2] = 1.0
    img *= np.asarray(intensity, np.float32)[:, None, None]
    return (img * 2.0 - 1.0).reshape(n, -1)


def concept_images(n: int, rng: np.random.Generator, noise: float = 0.05, boost: float = 4.0):
    """(images (n, 144) float32, codes (n, 4), the DiscreteBN). Intensity ~ U(0.7, 1) is the nuisance."""
    bn = DiscreteBN.random(image_hierarchy(), rng, boost=boost)
    g = bn.graph
    codes = bn.sample(n, rng)[:, [g.index(c) for c in CONCEPTS]]
    x = render(codes, rng.uniform(0.7, 1.0, n)) + noise * rng.normal(size=(n, SIDE * SIDE)).astype(np.float32)
    return x.astype(np.float32), codes, bn


# ------------------------------------------------------------------------------------------- the diffusion model
@dataclasses.dataclass(frozen=True)
class ProbeDiffusionConfig:
    dim: int = SIDE * SIDE
    hidden: int = 384
    t_dim: int = 64
    n_cond: int = 2          # condition: the shape label; index n_cond is the null (unconditional) token
    num_steps: int = 200
    schedule: str = "cosine"
    cond_drop: float = 0.2   # classifier-free dropout of the condition during training


class ProbeDenoiser(nnx.Module):
    """An MLP ε-predictor: [x_t, emb(t), emb(cond)] -> 3 GELU layers -> ε̂. `features` returns the hidden layers."""

    def __init__(self, cfg: ProbeDiffusionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        h = cfg.hidden
        self.cond_emb = nnx.Param(jax.random.normal(rngs.params(), (cfg.n_cond + 1, cfg.t_dim)) * 0.5)
        self.inp = Linear(cfg.dim + 2 * cfg.t_dim, h, (None, "mlp"), bias=True, std=1.0 / np.sqrt(cfg.dim), rngs=rngs)
        self.mid1 = Linear(h, h, ("mlp", "mlp"), bias=True, std=1.0 / np.sqrt(h), rngs=rngs)
        self.mid2 = Linear(h, h, ("mlp", "mlp"), bias=True, std=1.0 / np.sqrt(h), rngs=rngs)
        self.out = Linear(h, cfg.dim, ("mlp", None), bias=True, std=0.1 / np.sqrt(h), rngs=rngs)

    def features(self, x, t, cond):
        temb = timestep_embedding(t, self.cfg.t_dim)
        cemb = self.cond_emb[...][cond]
        h1 = jax.nn.gelu(self.inp(jnp.concatenate([x, temb, cemb], -1)))
        h2 = jax.nn.gelu(self.mid1(h1))
        h3 = jax.nn.gelu(self.mid2(h2)) + h2
        return h1, h2, h3

    def __call__(self, x, t, cond):
        return self.out(self.features(x, t, cond)[-1])


class ProbeDiffusionTask(Task):
    """ε-prediction MSE (jaxlm.diffusion.diffusion_loss) on {"x": [B, 144], "cond": [B]} with condition dropout."""

    name = "concepts-probe-diffusion"
    batch_spec = {"x": ("batch", None), "cond": ("batch",)}

    def __init__(self, cfg: ProbeDiffusionConfig):
        self.cfg = cfg
        self.schedule = make_schedule(cfg.schedule, cfg.num_steps)

    @property
    def step_key(self):
        return ("concepts-probe-diffusion", self.cfg)

    def build(self, rngs):
        return ProbeDenoiser(self.cfg, rngs=rngs)

    def loss(self, model, batch, rng):
        k_drop, k_diff = jax.random.split(rng)
        cond = batch["cond"].astype(jnp.int32)
        drop = jax.random.uniform(k_drop, cond.shape) < self.cfg.cond_drop
        cond = jnp.where(drop, self.cfg.n_cond, cond)
        per = diffusion_loss(lambda x, t, c: model(x, t, c), batch["x"], k_diff, self.schedule, cond=cond)
        return per.sum(), jnp.float32(per.shape[0]), {}

    def compat(self, run_cfg):
        return {**super().compat(run_cfg), "probe_diffusion": dataclasses.asdict(self.cfg)}


def train_probe_diffusion(x, cond, *, steps: int = 3000, batch: int = 128, lr: float = 2e-3, seed: int = 0,
                          progress: bool = False, **cfg_kw):
    """Train the probe diffusion model through the shared engine; returns (model, task, RunResult)."""
    from jaxlm.sharding import make_mesh
    from jaxlm.train import ArrayPipeline, LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig, train

    x = np.asarray(x, np.float32)
    cfg = ProbeDiffusionConfig(dim=x.shape[1], **cfg_kw)
    task = ProbeDiffusionTask(cfg)
    run_cfg = RunConfig(name="concepts-probe-diffusion", model=None,
                        optim=OptimConfig(weight_decay=0.0, clip_norm=1.0, b2=0.999),
                        train=TrainConfig(global_batch=batch, seed=seed, data_seed=seed, log_every=max(1, steps // 10),
                                          eval_batches=0, ckpt_every=10 ** 9, keep_latest=1, async_ckpt=False),
                        phases=(PhaseConfig("main", steps, lr=LRSchedule("cosine", lr, lr * 0.05,
                                                                          warmup=min(100, steps // 10))),))
    mesh = make_mesh("1x1", devices=jax.devices()[:1])
    arrays = {"x": x, "cond": np.asarray(cond, np.int32)}
    with tempfile.TemporaryDirectory() as tmp:
        res = train(run_cfg, ArrayPipeline(arrays, batch, seed=seed), mesh, Path(tmp), task=task, progress=progress,
                    print_fn=print if progress else (lambda *a: None), plot=False)
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: task.build(nnx.Rngs(0))), nnx.Param, ...)  # abstract: no init
    host = lambda t: jax.tree.map(np.asarray, t)  # noqa: E731
    model = nnx.merge(graphdef, nnx.State(host(res.state.params)), nnx.State(host(res.rest or {})))
    return model, task, res


# ------------------------------------------------------------------------------------------- probes
class LinearProbe:
    """A ridge-regression classifier (one-hot targets, standardised features, argmax): the linear probe, closed
    form, so a probe per (noise level, concept, feature set) costs one solve."""

    def __init__(self, ridge: float = 1.0):
        self.ridge = ridge

    def fit(self, z, y):
        z, y = np.asarray(z, np.float64), np.asarray(y)
        self.mu, self.sd = z.mean(0), z.std(0) + 1e-6
        zs = np.concatenate([(z - self.mu) / self.sd, np.ones((len(z), 1))], 1)
        onehot = np.eye(int(y.max()) + 1)[y]
        self.w = np.linalg.solve(zs.T @ zs + self.ridge * np.eye(zs.shape[1]), zs.T @ onehot)
        return self

    def predict(self, z):
        zs = (np.asarray(z, np.float64) - self.mu) / self.sd
        return np.argmax(np.concatenate([zs, np.ones((len(zs), 1))], 1) @ self.w, 1)

    def score(self, z, y) -> float:
        return float((self.predict(z) == np.asarray(y)).mean())


def _probe_acc(ztr, ytr, zte, yte) -> float:
    return LinearProbe().fit(ztr, ytr).score(zte, yte)


def probe_accuracy(model, task, x, codes, ts, seed: int = 0, n_train: int | None = None) -> list[dict]:
    """(a) Rows dict(t, snr, concept, level, acc_xt, acc_feat, chance): a linear probe of each concept from the
    noisy image x_t and from the denoiser's last hidden layer at (x_t, t, null condition), per noise level t."""
    x, codes = np.asarray(x, np.float32), np.asarray(codes)
    n = len(x)
    n_train = n_train or n // 2
    if n_train < 20 or n - n_train < 20:
        raise ConceptDataError(f"probe_accuracy: need at least 20 train and 20 test images, got {n_train}/{n - n_train}")
    graphdef, state = nnx.split(model)
    sched = task.schedule

    @jax.jit
    def feats(state, xb, t, noise):
        m = nnx.merge(graphdef, state)
        tb = jnp.full((xb.shape[0],), t, jnp.int32)
        xt = q_sample(sched, xb, tb, noise)
        return xt, m.features(xt, tb, jnp.full((xb.shape[0],), m.cfg.n_cond, jnp.int32))[-1]

    rng = np.random.default_rng(seed)
    rows = []
    for t in ts:
        xt, h = feats(state, x, int(t), rng.normal(size=x.shape).astype(np.float32))
        xt, h = np.asarray(xt), np.asarray(h)
        snr = float(sched.alphas_cumprod[int(t)] / (1 - sched.alphas_cumprod[int(t)]))
        for j, c in enumerate(CONCEPTS):
            y = codes[:, j]
            rows.append(dict(t=int(t), snr=snr, concept=c, level=LEVEL[c],
                             acc_xt=_probe_acc(xt[:n_train], y[:n_train], xt[n_train:], y[n_train:]),
                             acc_feat=_probe_acc(h[:n_train], y[:n_train], h[n_train:], y[n_train:]),
                             chance=float(np.bincount(y[n_train:]).max() / (n - n_train))))
    return rows


def concept_classifiers(x, codes):
    """Linear classifiers of every concept from clean images (to label generated samples)."""
    return [LinearProbe().fit(x, codes[:, j]) for j in range(codes.shape[1])]


def _sampler(model, task, steps: int, guidance: float):
    """(path, walk): walk(xs, (cond_a, cond_b, t_switch), rng, lo, hi) runs DDIM (η = 0) over path[lo..hi] with
    classifier-free guidance `guidance`, conditioned on cond_a while t > t_switch and on cond_b after."""
    graphdef, state = nnx.split(model)
    path = sampling_timesteps(task.cfg.num_steps, steps, "trailing")
    null = task.cfg.n_cond

    @functools.partial(jax.jit, static_argnums=(4, 5))
    def walk(state, xs, cond, rng, lo, hi):
        net = lambda xc, t, c: nnx.merge(graphdef, state)(xc, t, c)  # noqa: E731
        guided = classifier_free_guidance(net, guidance, jnp.int32(null))

        def fn(xc, t, c):
            ca, cb, t_sw = c
            return guided(xc, t, jnp.where(t > t_sw, ca, cb))
        return sample(fn, task.schedule, xs, rng, timesteps=path[lo:hi + 1], cond=cond, method="ddim", eta=0.0)

    return path, lambda xs, cond, rng, lo, hi: walk(state, xs, cond, rng, lo, hi)


def _labels(classifiers, imgs):
    return np.stack([c.predict(np.asarray(imgs)) for c in classifiers], 1)


def _points(steps: int, points: int):
    """Step indices 0..steps, dense at the start (where a DDIM run decides its concepts), geometric after."""
    if points <= 1:
        return [0]
    return sorted(set([0, steps] + np.geomspace(1, steps, points - 1).round().astype(int).tolist()))


def switch_condition(model, task, classifiers, n: int = 256, steps: int = 50, guidance: float = 3.0, seed: int = 0,
                     a: int = 0, b: int = 1, points: int = 10):
    """(b) Rows dict(switch_step, t_switch, share_b, kept_low): DDIM (η = 0, guidance scale `guidance`) from the
    same noise, conditioned on shape `a` for the first `switch_step` steps and on `b` after (switch_step 0: all b;
    `steps`: all a). share_b: samples the clean-image classifier calls shape b; kept_low: samples whose low-level
    concepts equal those of the all-`a` sample."""
    path, run = _sampler(model, task, steps, guidance)
    rng = jax.random.key(seed)
    x_T = jax.random.normal(rng, (n, task.cfg.dim))
    ca, cb = jnp.full((n,), a, jnp.int32), jnp.full((n,), b, jnp.int32)
    out = lambda k: run(x_T, (ca, cb, jnp.int32(path[k] if k < steps else -2)), rng, 0, steps)  # noqa: E731
    base = _labels(classifiers, out(steps))
    rows = []
    for k in _points(steps, points):
        lab = _labels(classifiers, out(k))
        rows.append(dict(switch_step=k, t_switch=int(path[k]) if k < steps else -1,
                         share_b=float((lab[:, 0] == b).mean()),
                         kept_low=float((lab[:, 1:] == base[:, 1:]).all(1).mean())))
    return rows


def perturb_at(model, task, classifiers, n: int = 256, steps: int = 50, scale: float = 1.0, seed: int = 0,
               thresh: float = 0.5, points: int = 7):
    """(c) Rows dict(step, t, changed_area, shape_changed, low_changed): a deterministic unconditional DDIM
    trajectory; at step k, x_{t_k} gets + scale * √(1 - ᾱ_{t_k}) * z (a perturbation sized to the noise level).
    changed_area: mean fraction of pixels whose final value moved by more than `thresh` (images are in [-1, 1])."""
    path, run = _sampler(model, task, steps, 1.0)
    rng = jax.random.key(seed)
    k_x, k_p = jax.random.split(rng)
    x_T = jax.random.normal(k_x, (n, task.cfg.dim))
    null = jnp.full((n,), task.cfg.n_cond, jnp.int32)
    cond = (null, null, jnp.int32(-2))
    ref = run(x_T, cond, rng, 0, steps)
    ref_lab = _labels(classifiers, ref)
    z = jax.random.normal(k_p, x_T.shape)
    rows = []
    for k in _points(steps - 1, points):
        xs = run(x_T, cond, rng, 0, k) if k else x_T
        t = int(path[k])
        xs = xs + scale * jnp.sqrt(1.0 - task.schedule.alphas_cumprod[t]) * z
        final = run(xs, cond, rng, k, steps)
        lab = _labels(classifiers, final)
        rows.append(dict(step=k, t=t, changed_area=float((np.abs(np.asarray(final - ref)) > thresh).mean()),
                         shape_changed=float((lab[:, 0] != ref_lab[:, 0]).mean()),
                         low_changed=float((lab[:, 1:] != ref_lab[:, 1:]).any(1).mean())))
    return rows


__all__ = ["CONCEPTS", "ProbeDenoiser", "ProbeDiffusionConfig", "ProbeDiffusionTask", "concept_classifiers",
           "LinearProbe", "concept_images", "image_hierarchy", "perturb_at", "probe_accuracy", "render", "switch_condition",
           "train_probe_diffusion"]
