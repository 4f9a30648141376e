"""DiLED on sklearn digits against baselines trained with the same networks and steps, 3 seeds (mean ± std):

- DiLED joint (the original's objective, ddpm_weight 1);
- autoencoder alone (ddpm_weight = 0; no generator);
- two-stage: that autoencoder frozen, then the same latent DDPM trained on its latents for the same steps
  (engine phase trainable=^denoiser/);
- VAE (learned variance, KL weight --kl-weight, samples from the N(0, I) prior).

Metrics on the 297 held-out digits: reconstruction MSE from μ (pixels in [-1, 1]); "digits-FD", the Fréchet
distance between 297 generated and the 297 held-out images in the 64-unit hidden layer of an sklearn
MLPClassifier trained on the training digits (a small in-repo classifier: NOT Inception FID); linear probe
(logistic regression) accuracy on μ, next to PCA of the pixels with the same number of components.

    python benchmarks/diled_eval.py                 # 3 seeds x 4 models, ~1500 steps each (CPU: ~15-25 min)
    python benchmarks/diled_eval.py --steps 200 --seeds 0 --no-record   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

MODELS = {  # name -> (kind, overrides of the image preset)
    "DiLED (joint)": ("joint", {}),
    "autoencoder alone": ("ae", {"loss": {"ddpm_weight": 0.0}}),
    "two-stage": ("two-stage", {}),
    "VAE": ("vae", {"objective": "vae"}),
    "DiLED (joint, exact t=1, per-example weighting)": ("joint_exact", {"loss": {"t1_form": "exact",
                                                                                  "rec_weighting": "per_example"}}),
}
TITLE = "DiLED on sklearn digits: joint vs autoencoder, two-stage, VAE (benchmarks/diled_eval.py)"


def frechet(a, b) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def features_fn(train):
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=0)
    X = train["image"].reshape(len(train["image"]), -1)
    clf.fit(X, train["label"])
    W, b = clf.coefs_[0], clf.intercepts_[0]
    return (lambda imgs: np.maximum(np.asarray(imgs).reshape(len(imgs), -1) @ W + b, 0.0)), clf


def train_one(cfg, data, steps, seed, out, lr, init=None, trainable=(), batch=64):
    """Train `cfg` for `steps` on the arrays `data` (the Task's batch keys) through the engine; the trained
    DiLED back from the run's checkpoint. init: a DiLED to start from; trainable: regexes (engine phase)."""
    import jax

    from jaxlm.diled.task import DiLEDTask, load_diled
    from jaxlm.sharding import make_mesh
    from jaxlm.train import ArrayPipeline, LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig, train

    task = DiLEDTask(cfg, init=init)
    if cfg.modality == "text":
        from jaxlm.models.diled.data import save_codec

        save_codec(cfg.ae, out)
    run = RunConfig(name="diled-bench", model=None, optim=OptimConfig(weight_decay=0.0, clip_norm=1.0, b2=0.999),
                    train=TrainConfig(global_batch=batch, seed=seed, data_seed=seed, log_every=100, eval_batches=0,
                                      ckpt_every=steps, keep_latest=1, async_ckpt=False),
                    phases=(PhaseConfig("main", steps, lr=LRSchedule("cosine", lr, lr * 0.1, warmup=steps // 10),
                                        trainable=tuple(trainable)),))
    train(run, ArrayPipeline({k: data[k] for k in task.batch_spec}, batch, seed=seed),
          make_mesh("1x1", devices=jax.devices()[:1]), out, task=task, progress=False, print_fn=lambda *a: None,
          plot=False)
    return load_diled(out, cfg)


def evaluate(model, held, feats, probe_train, gen_from: str, seed: int) -> dict:
    import jax
    from sklearn.linear_model import LogisticRegression

    from jaxlm.models.diled import api

    mu = np.asarray(api.encode(model, {"image": held["image"]}))
    rec = np.asarray(api.decode(model, mu))
    out = {"recon_mse": float(np.mean((rec - held["image"]) ** 2))}
    n = len(held["image"])
    if gen_from == "none":
        out["fd"] = float("nan")
    else:
        key = jax.random.key(1000 + seed)
        if gen_from == "prior":
            gen = np.asarray(api.decode(model, jax.random.normal(key, (n, model.cfg.latent_dim))))
        else:
            _, gen = api.generate(model, n, key)
        out["fd"] = frechet(feats(np.clip(np.asarray(gen), -1, 1)), feats(held["image"]))
    mu_tr = np.asarray(api.encode(model, {"image": probe_train["image"]}))
    lr = LogisticRegression(max_iter=3000).fit(mu_tr, probe_train["label"])
    out["probe_acc"] = float(lr.score(mu, held["label"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--kl-weight", type=float, default=0.01)
    ap.add_argument("--out", default="runs/diled-bench")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--models", nargs="*", default=None, help=f"a subset of {list(MODELS)} (default: the first 4)")
    args = ap.parse_args(argv)

    import jax
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    from jaxlm.models.diled import data as D
    from jaxlm.models.diled.model import diled_config

    d = D.digits()
    tr, held = d["train"], d["heldout"]
    feats, clf = features_fn(tr)
    real_fd = frechet(feats(tr["image"][:297]), feats(held["image"]))
    base = diled_config("image", ddpm_weight=1.0)
    pca = PCA(base.latent_dim, random_state=0).fit(tr["image"].reshape(len(tr["image"]), -1))
    f = lambda x: pca.transform(x.reshape(len(x), -1))
    pca_acc = float(LogisticRegression(max_iter=3000).fit(f(tr["image"]), tr["label"]).score(f(held["image"]),
                                                                                                held["label"]))
    names = [n for n in MODELS if n in args.models] if args.models else list(MODELS)[:4]
    rows: dict[str, list[dict]] = {k: [] for k in names}
    t0 = time.time()
    for seed in args.seeds:
        root = Path(args.out) / f"seed{seed}"
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        ae = None
        for name in names:
            kind, over = MODELS[name]
            if kind == "two-stage":
                if ae is None:
                    ae = train_one(base.replace(loss=base.loss.replace(ddpm_weight=0.0)), tr, args.steps, seed,
                                   root / "ae", args.lr)
                ae.cfg = base  # same parameters under the joint objective's config: only the denoiser trains
                m = train_one(base, tr, args.steps, seed, root / "two_stage", args.lr, init=ae,
                              trainable=("^denoiser/",))
                gen = "ddpm"
            else:
                cfg = base.replace(loss=base.loss.replace(**over.get("loss", {})),
                                   **{k: v for k, v in over.items() if k != "loss"})
                if cfg.objective == "vae":
                    cfg = cfg.replace(kl_weight=args.kl_weight)
                m = train_one(cfg, tr, args.steps, seed, root / kind, args.lr)
                if kind == "ae":
                    ae = m
                gen = {"ae": "none", "vae": "prior"}.get(kind, "ddpm")
            rows[name].append(evaluate(m, held, feats, tr, gen, seed))
        print(f"seed {seed} done ({time.time() - t0:.0f} s): " + json.dumps({k: v[-1] for k, v in rows.items()}))

    def ms(vals):
        v = np.asarray(vals, float)
        return "n/a" if np.isnan(v).all() else f"{v.mean():.4f} ± {v.std():.4f}"

    table = ["| model | recon MSE ↓ | digits-FD ↓ | linear probe on μ ↑ |", "|---|---|---|---|"]
    for name, rs in rows.items():
        table.append(f"| {name} | {ms([r['recon_mse'] for r in rs])} | {ms([r['fd'] for r in rs])} | "
                     f"{ms([r['probe_acc'] for r in rs])} |")
    table.append(f"| reference: real training digits vs held-out | - | {real_fd:.4f} | PCA-{base.latent_dim} of pixels: "
                 f"{pca_acc:.4f} |")
    text = "\n".join(table)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"rows": rows, "real_fd": real_fd, "pca_acc": pca_acc,
                                                             "args": vars(args)}, indent=2))
    if not args.no_record:
        from benchmarks.record import record, utc_now

        intro = ("Same conv autoencoder (latent 16), same MLPSkipNet (4 x 128), same steps, batch 64, Adam "
                 "(cosine from the lr), T = 200 constant-β 0.008 latent diffusion, EDDPM's DDPM sampler. "
                 "digits-FD = Fréchet distance in the hidden layer of an sklearn MLP digits classifier (not "
                 "Inception FID). Mean ± std over seeds; held-out = 297 fixed digits.")
        head = (f"### {utc_now()} — {platform.machine()} {jax.device_count()} x {jax.devices()[0].platform}; "
                f"{args.steps} steps per model, seeds {args.seeds}, VAE kl_weight {args.kl_weight}; "
                f"jax {jax.__version__}")
        record(TITLE, intro, head + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
