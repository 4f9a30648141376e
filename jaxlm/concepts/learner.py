"""Bottom-level concept learning: an NNX autoencoder whose code is one discrete slot per concept (straight-through
Gumbel-softmax) plus a small continuous part for the nuisance, trained on the shared engine (`ConceptTask`), and
its evaluation against the true concepts up to permutation of slots and of states; a linear baseline (PCA, then
k-means per component) on the same observations.

x = g(d, c) in `jaxlm.concepts.dgp.mix_observations`: d are the observed (bottom-level) concepts of a latent
hierarchy, c a Gaussian nuisance. The learner sees x only. Its decoder's first layer is linear in the
concatenated one-hot slots and the continuous code (the generator's own form), the continuous code pays a KL
price to N(0, I) while a discrete slot carries at most log k nats for free, and a batch-level usage term keeps
every state of every slot in use. A slot is then matched to a true concept by the Hungarian assignment on
normalised mutual information, and its states to the concept's states by `matched_accuracy`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy.optimize import linear_sum_assignment

from jaxlm.concepts.errors import ConceptDataError
from jaxlm.concepts.metrics import adjusted_rand_index, matched_accuracy, normalized_mutual_info
from jaxlm.nn.linear import Linear
from jaxlm.train.task import Task


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    dim: int                      # observation size
    cards: tuple[int, ...]        # states per discrete slot (the number of bottom-level concepts = len)
    cont_dim: int = 4             # continuous (nuisance) code size
    hidden: int = 128
    tau: float = 1.0              # Gumbel-softmax temperature
    beta: float = 1.0             # weight of KL(q(c|x) || N(0, I)) in the per-example loss
    usage: float = 1.0            # weight of -H(batch-mean slot distribution), per slot (keeps states in use)
    noise: float = 0.0            # input noise std during training (a denoising autoencoder when > 0)
    relax: str = "gumbel"         # "gumbel": straight-through Gumbel-softmax; "softmax": the plain softmax (no noise)
    sharpen: float = 0.0          # weight of the per-example slot entropy (pushes "softmax" codes to one-hot)

    def __post_init__(self):
        if not self.cards or any(int(k) != k or k < 2 for k in self.cards):
            raise ConceptDataError(f"LearnerConfig.cards={self.cards}: every slot needs at least 2 states")
        if self.dim < 1 or self.cont_dim < 0 or self.hidden < 1:
            raise ConceptDataError(f"LearnerConfig: dim={self.dim}, cont_dim={self.cont_dim}, hidden={self.hidden} "
                                   "must be positive (cont_dim may be 0)")
        if self.relax not in ("gumbel", "softmax"):
            raise ConceptDataError(f"LearnerConfig.relax={self.relax!r}: expected 'gumbel' or 'softmax'")


class ConceptAutoencoder(nnx.Module):
    """x -> (slot logits, continuous mean/log-variance) -> x̂. Parameters carry logical axes for the engine."""

    def __init__(self, cfg: LearnerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        k, h = int(sum(cfg.cards)), cfg.hidden
        lin = lambda a, b, axes, std: Linear(a, b, axes, bias=True, std=std, rngs=rngs)  # noqa: E731
        self.enc1 = lin(cfg.dim, h, ("embed", "mlp"), 1.0 / np.sqrt(cfg.dim))
        self.enc2 = lin(h, h, ("mlp", "mlp"), 1.0 / np.sqrt(h))
        self.to_logits = lin(h, k, ("mlp", None), 1.0 / np.sqrt(h))
        self.to_stats = lin(h, 2 * cfg.cont_dim, ("mlp", None), 0.1 / np.sqrt(h)) if cfg.cont_dim else None
        self.dec1 = lin(k + cfg.cont_dim, h, (None, "mlp"), 1.0 / np.sqrt(k + cfg.cont_dim))
        self.dec2 = lin(h, h, ("mlp", "mlp"), 1.0 / np.sqrt(h))
        self.dec_out = lin(h, cfg.dim, ("mlp", "embed"), 1.0 / np.sqrt(h))

    def encode(self, x):
        """(logits [B, sum cards], mean [B, cont_dim], log-variance [B, cont_dim])."""
        hid = jax.nn.gelu(self.enc2(jax.nn.gelu(self.enc1(x))))
        logits = self.to_logits(hid)
        if self.to_stats is None:
            z = jnp.zeros(x.shape[:-1] + (0,), x.dtype)
            return logits, z, z
        mu, logvar = jnp.split(self.to_stats(hid), 2, axis=-1)
        return logits, mu, jnp.clip(logvar, -12.0, 6.0)

    def decode(self, onehots, c):
        return self.dec_out(jax.nn.gelu(self.dec2(jax.nn.gelu(self.dec1(jnp.concatenate([onehots, c], -1))))))

    def __call__(self, x):
        """Deterministic reconstruction from the argmax slots and the mean continuous code."""
        logits, mu, _ = self.encode(x)
        return self.decode(hard_slots(logits, self.cfg.cards), mu)


def _split(logits, cards):
    return jnp.split(logits, np.cumsum(cards)[:-1].tolist(), axis=-1)


def hard_slots(logits, cards):
    return jnp.concatenate([jax.nn.one_hot(jnp.argmax(lg, -1), k, dtype=logits.dtype)
                            for lg, k in zip(_split(logits, cards), cards)], -1)


def gumbel_slots(logits, cards, rng, tau: float):
    """Straight-through Gumbel-softmax per slot: hard one-hot forward, the soft sample's gradient backward."""
    outs = []
    for lg, k, key in zip(_split(logits, cards), cards, jax.random.split(rng, len(cards))):
        soft = jax.nn.softmax((lg + jax.random.gumbel(key, lg.shape, lg.dtype)) / tau, -1)
        hard = jax.nn.one_hot(jnp.argmax(soft, -1), k, dtype=lg.dtype)
        outs.append(hard + soft - jax.lax.stop_gradient(soft))
    return jnp.concatenate(outs, -1)


class ConceptTask(Task):
    """The discrete-bottleneck autoencoder objective on {"x": [B, dim]} batches for `jaxlm.train.train`.

    Per example: squared reconstruction error (summed over dims) + beta * KL of the continuous code + sharpen *
    the slots' entropy; per batch:
    usage * sum over slots of (log k - H(mean over the batch of the slot's softmax)), i.e. zero when every state
    is used equally often."""

    name = "concepts-autoencoder"
    batch_spec = {"x": ("batch", None)}

    def __init__(self, cfg: LearnerConfig):
        self.cfg = cfg

    @property
    def step_key(self):
        return ("concepts-autoencoder", self.cfg)

    def build(self, rngs):
        return ConceptAutoencoder(self.cfg, rngs=rngs)

    def _terms(self, model, x, rng):
        cfg = self.cfg
        k_in, k_g, k_c = jax.random.split(rng, 3)
        x_in = x + cfg.noise * jax.random.normal(k_in, x.shape, x.dtype) if cfg.noise else x
        logits, mu, logvar = model.encode(x_in)
        if cfg.relax == "gumbel":
            onehots = gumbel_slots(logits, cfg.cards, k_g, cfg.tau)
        else:
            onehots = jnp.concatenate([jax.nn.softmax(lg / cfg.tau, -1) for lg in _split(logits, cfg.cards)], -1)
        c = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_c, mu.shape, mu.dtype)
        rec = ((model.decode(onehots, c) - x) ** 2).sum(-1)
        kl = 0.5 * (mu ** 2 + jnp.exp(logvar) - 1.0 - logvar).sum(-1)
        usage, ent = 0.0, 0.0
        for lg, k in zip(_split(logits, cfg.cards), cfg.cards):
            q = jax.nn.softmax(lg, -1)
            p = q.mean(0)
            usage = usage + np.log(k) + (p * jnp.log(p + 1e-9)).sum()
            ent = ent - (q * jnp.log(q + 1e-9)).sum(-1)
        return rec, kl, ent, usage

    def loss(self, model, batch, rng):
        x = batch["x"]
        rec, kl, ent, usage = self._terms(model, x, rng)
        b = jnp.float32(x.shape[0])
        total = (rec + self.cfg.beta * kl + self.cfg.sharpen * ent).sum() + self.cfg.usage * usage * b
        return total, b, {"rec": rec.sum(), "kl": kl.sum(), "entropy": ent.sum(), "usage": usage * b}

    def eval_loss(self, model, batch):
        x = batch["x"]
        return ((model(x) - x) ** 2).sum(), jnp.float32(x.shape[0])

    def compat(self, run_cfg):
        base = super().compat(run_cfg)
        return {**base, "learner": {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in dataclasses.asdict(self.cfg).items()}}


# ------------------------------------------------------------------------------------------- training and use
def train_concept_learner(x, cards, *, steps: int = 1500, batch: int = 256, lr: float = 3e-3, seed: int = 0,
                          out_dir=None, progress: bool = False, mesh=None, **cfg_kw):
    """Train a ConceptAutoencoder on observations x (n, dim) with one slot per entry of `cards`, through the
    shared engine. Returns (model, RunResult). out_dir=None trains in a temporary directory."""
    from jaxlm.sharding import make_mesh
    from jaxlm.train import ArrayPipeline, LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig, train

    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConceptDataError(f"train_concept_learner: x must be (n, dim) with n >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConceptDataError("train_concept_learner: x has non-finite values")
    cfg = LearnerConfig(dim=x.shape[1], cards=tuple(int(k) for k in cards), **cfg_kw)
    task = ConceptTask(cfg)
    b = min(batch, x.shape[0])
    run_cfg = RunConfig(name="concepts-learner", model=None, optim=OptimConfig(weight_decay=0.0, clip_norm=1.0),
                        train=TrainConfig(global_batch=b, seed=seed, data_seed=seed, log_every=max(1, steps // 10),
                                          eval_batches=0, ckpt_every=10 ** 9, keep_latest=1, async_ckpt=False),
                        phases=(PhaseConfig("main", steps, lr=LRSchedule("cosine", lr, lr * 0.05,
                                                                          warmup=min(50, steps // 10))),))
    mesh = mesh if mesh is not None else make_mesh("1x1", devices=jax.devices()[:1])
    with tempfile.TemporaryDirectory() as tmp:
        res = train(run_cfg, ArrayPipeline({"x": x}, b, seed=seed), mesh, Path(out_dir or tmp), task=task,
                    progress=progress, print_fn=print if progress else (lambda *a: None), plot=False)
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: task.build(nnx.Rngs(0))), nnx.Param, ...)  # abstract: no init
    host = lambda t: jax.tree.map(np.asarray, t)  # noqa: E731
    model = nnx.merge(graphdef, nnx.State(host(res.state.params)), nnx.State(host(res.rest or {})))
    return model, res


_ENCODE = {}


def encode_concepts(model: ConceptAutoencoder, x, chunk: int = 4096) -> np.ndarray:
    """Argmax state of every slot: int array (n, n_slots)."""
    graphdef, state = nnx.split(model)
    key = (graphdef, model.cfg)
    if key not in _ENCODE:
        def f(state, xb):
            logits, _, _ = nnx.merge(graphdef, state).encode(xb)
            return jnp.stack([jnp.argmax(lg, -1) for lg in _split(logits, model.cfg.cards)], -1)
        _ENCODE[key] = jax.jit(f)
    x = np.asarray(x, np.float32)
    return np.concatenate([np.asarray(_ENCODE[key](state, x[i:i + chunk])) for i in range(0, len(x), chunk)])


def concept_scores(true_codes, pred_codes) -> dict:
    """Match predicted slots to true concepts (Hungarian on NMI), then per concept: matched accuracy (Hungarian on
    states), ARI and NMI; plus their means and `chance` (the matched accuracy of always predicting the most
    frequent state). Returns dict(assignment: true concept -> slot, per_concept: [...], mean_acc, mean_ari,
    mean_nmi, chance)."""
    t, p = np.asarray(true_codes), np.asarray(pred_codes)
    if t.ndim != 2 or p.ndim != 2 or t.shape[0] != p.shape[0]:
        raise ConceptDataError(f"concept_scores: codes must be (n, m) arrays with equal n, got {t.shape}, {p.shape}")
    nmi = np.array([[normalized_mutual_info(t[:, i], p[:, j]) for j in range(p.shape[1])] for i in range(t.shape[1])])
    rows, cols = linear_sum_assignment(-nmi)
    per = []
    for i, j in zip(rows, cols):
        per.append(dict(concept=int(i), slot=int(j), acc=matched_accuracy(t[:, i], p[:, j]),
                        ari=adjusted_rand_index(t[:, i], p[:, j]), nmi=float(nmi[i, j]),
                        chance=float(np.bincount(t[:, i]).max() / len(t))))
    mean = lambda k: float(np.mean([r[k] for r in per])) if per else 0.0  # noqa: E731
    return dict(assignment={r["concept"]: r["slot"] for r in per}, per_concept=per, mean_acc=mean("acc"),
                mean_ari=mean("ari"), mean_nmi=mean("nmi"), chance=mean("chance"))


def kmeans(z, k: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; labels (n,)."""
    z = np.asarray(z, np.float64)
    if z.ndim == 1:
        z = z[:, None]
    centers = [z[rng.integers(len(z))]]
    for _ in range(1, k):
        d2 = np.min(((z[:, None, :] - np.array(centers)[None]) ** 2).sum(-1), 1)
        centers.append(z[rng.choice(len(z), p=d2 / d2.sum())] if d2.sum() > 0 else z[rng.integers(len(z))])
    c = np.array(centers)
    lab = np.zeros(len(z), np.int64)
    for _ in range(iters):
        lab = np.argmin(((z[:, None, :] - c[None]) ** 2).sum(-1), 1)
        new = np.array([z[lab == j].mean(0) if (lab == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return lab


def linear_concept_baseline(x, cards, seed: int = 0) -> np.ndarray:
    """The linear baseline: whiten x by PCA, keep one principal component per concept, and cut each into
    k_j states by k-means. Exact when each concept moves x along its own direction; blind to nonlinear mixing."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] < len(cards):
        raise ConceptDataError(f"linear_concept_baseline: x must be (n, dim >= {len(cards)}), got {x.shape}")
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    comps = xc @ vt[:len(cards)].T
    rng = np.random.default_rng(seed)
    return np.stack([kmeans(comps[:, j], int(k), rng) for j, k in enumerate(cards)], 1)


__all__ = ["ConceptAutoencoder", "ConceptTask", "LearnerConfig", "concept_scores", "encode_concepts", "gumbel_slots",
           "hard_slots", "kmeans", "linear_concept_baseline", "train_concept_learner"]
