"""DiLED / EDDPM on the shared engine: train the joint encoder / decoder / latent-diffusion model on embedded real
data, then reconstruct, generate and interpolate from it.

    python -m recipes.diled --modality image               # sklearn digits, ~minutes on a laptop CPU
    python -m recipes.diled --modality text                # sentences of the Python docs, corpus BPE
    python -m recipes.diled --modality protein             # Gifford CDR3 antibodies (+ fitness head)
    python -m recipes.diled --modality image --resume      # continue the run in --out
    python -m recipes.diled --modality text --size paper --mesh 8x1   # the original's scale (a GPU/TPU job)

Options of the objective (see docs/diled.md): --ddpm-weight (0 = the autoencoder alone), --criterion l1|mse,
--t1-form code|exact, --rec-weighting code|per_example.

--schedule warm (the text default) is the original text run's warm start: the autoencoder alone first
(--steps, in --out/stage1-ae; the original loads a pretrained Optimus), then the latent DDPM on its frozen latents
(--ddpm-steps, --out/stage2-ddpm; the original's --ddpm_pretrain), then the joint objective at the low --ft-lr for
--ft-steps (in --out; the original fine-tunes at 5e-5). --schedule joint trains everything jointly from scratch.
--stop-at counts the steps of all stages together.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

from jaxlm.cli import add_mesh_argument, command_parser, run_command
from jaxlm.errors import ConfigError

MODULE = "recipes.diled"
MODALITIES = ("text", "image", "protein")
DEFAULT_STEPS = {"image": 1500, "text": 3000, "protein": 2000}
DEFAULT_LR = {"image": 2e-3, "text": 5e-3, "protein": 1e-3}
DEFAULT_SCHEDULE = {"image": "joint", "text": "warm", "protein": "joint"}
WARM = {"ddpm_steps": 300, "ft_steps": 300, "ft_lr_factor": 0.1}   # stage 2 steps, stage 3 steps, lr_3 = lr * f


def build_parser():
    p = command_parser(MODULE, __doc__, reads="the embedded data of --modality (sklearn digits; the Python docs "
                       "shipped with the interpreter; --data DIR or ../shared/data/gifford for proteins); --out on "
                       "--resume", writes="--out (default runs/diled-MODALITY): checkpoints/, metrics.jsonl, "
                       "loss_curve.png, summary.json, samples.json (reconstructions, samples, interpolations) and "
                       "for images samples.png")
    p.add_argument("--modality", required=True, help="text | image | protein")
    p.add_argument("--size", default="tiny", choices=["tiny", "paper"], help="model preset")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 1500 image, 3000 text, "
                   "2000 protein); with --schedule warm the autoencoder stage's")
    p.add_argument("--schedule", default=None, choices=["joint", "warm"], help="joint from scratch, or the "
                   "original's warm start (AE, then DDPM on frozen latents, then joint); default warm for text")
    p.add_argument("--ddpm-steps", type=int, default=WARM["ddpm_steps"], help="warm start: DDPM stage steps")
    p.add_argument("--ft-steps", type=int, default=WARM["ft_steps"], help="warm start: joint stage steps")
    p.add_argument("--ft-lr", type=float, default=None, help="warm start: joint stage lr (default lr / 10)")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3 image, 5e-3 text, 1e-3 "
                   "protein)")
    p.add_argument("--ddpm-weight", type=float, default=None, help="weight of the diffusion term (default: the "
                   "original's, 8 text / 1 protein; 1 image); 0 trains the autoencoder alone")
    p.add_argument("--criterion", default="mse", choices=["mse", "l1"])
    p.add_argument("--t1-form", default="code", choices=["code", "exact"])
    p.add_argument("--rec-weighting", default="code", choices=["code", "per_example"])
    p.add_argument("--word-dropout", type=float, default=0.0, help="text: drop decoder input tokens to PAD with "
                   "this probability in training (Bowman et al.; forces the decoder to read z; 0 = the original)")
    p.add_argument("--diffusion-steps", type=int, default=None, help="T (default 200 tiny, 1000 paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="protein data folder with train.csv / test.csv")
    p.add_argument("--limit", type=int, default=None, help="use at most this many training examples")
    p.add_argument("--samples", type=int, default=8, help="generated samples to report")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-at", type=int, default=None, help="stop after this many steps (continue with --resume)")
    p.add_argument("--no-progress", action="store_true")
    add_mesh_argument(p, None)
    return p


def load_data(modality: str, cfg, data_dir=None, limit=None):
    """(train arrays, held-out arrays) for the modality."""
    import numpy as np

    from jaxlm.models.diled import data as D

    if modality == "image":
        d = D.digits()
        tr, te = {"image": d["train"]["image"]}, {"image": d["heldout"]["image"], "label": d["heldout"]["label"]}
        tr_labels = d["train"]["label"]
    elif modality == "text":
        s = D.doc_sentences(max_chars=cfg.ae.max_len - 2 if cfg.ae.tokenizer == "bytes" else 46)
        codec = D.text_codec(cfg.ae)
        tr, te = {"tokens": codec.encode(s["train"], cfg.ae.max_len)}, {"tokens": codec.encode(s["heldout"],
                                                                                               cfg.ae.max_len)}
        tr_labels = None
    else:
        g = D.gifford(data_dir, limit=None if limit is None else max(limit, 1))
        tr, te = dict(g["train"]), dict(g["heldout"])
        te = {k: v[:2048] for k, v in te.items()}
        tr_labels = None
    if limit is not None:
        tr = {k: v[:limit] for k, v in tr.items()}
    return tr, te, tr_labels if tr_labels is None else np.asarray(tr_labels)


def run(args) -> int:
    import jax
    import numpy as np

    from jaxlm.models.diled import api
    from jaxlm.models.diled.model import check_modality, diled_config
    from jaxlm.diled.task import DiLEDTask, load_diled
    from jaxlm.sharding import make_mesh
    from jaxlm.train import ArrayPipeline, LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig, train

    mod = check_modality(args.modality)
    over = {"criterion": args.criterion, "t1_form": args.t1_form, "rec_weighting": args.rec_weighting}
    if args.ddpm_weight is not None:
        over["ddpm_weight"] = args.ddpm_weight
    if args.diffusion_steps is not None:
        over["num_steps"] = args.diffusion_steps
    cfg = diled_config(mod, args.size, **over)
    if args.word_dropout:
        if mod != "text":
            raise ConfigError(f"--word-dropout {args.word_dropout}: only the text decoder has word dropout "
                              f"(--modality {mod})")
        cfg = cfg.replace(ae=dataclasses.replace(cfg.ae, word_dropout=args.word_dropout))
    steps = args.steps if args.steps is not None else DEFAULT_STEPS[mod]
    lr = args.lr if args.lr is not None else DEFAULT_LR[mod]
    tr, te, _ = load_data(mod, cfg, args.data, args.limit)
    spec_keys = list(DiLEDTask(cfg).batch_spec)
    B = min(args.batch, next(iter(tr.values())).shape[0])
    eval_n = (min(len(next(iter(te.values()))), 256) // B) * B or B
    held = {k: v[:eval_n] for k, v in te.items() if k in spec_keys}
    eval_batches = {"heldout": [{k: v[i:i + B] for k, v in held.items()} for i in range(0, eval_n, B)]}
    out = Path(args.out or f"runs/diled-{mod}")
    mesh = make_mesh(args.mesh or "1x1", devices=None if args.mesh else jax.devices()[:1])

    def stage(name, cfg_s, n, lr_s, out_s, init=None, trainable=(), stop_at=None):
        run_cfg = RunConfig(name=f"diled-{mod}-{name}", model=None,
                            optim=OptimConfig(weight_decay=0.0, clip_norm=1.0, b2=0.999),
                            train=TrainConfig(global_batch=B, seed=args.seed, data_seed=args.seed, log_every=25,
                                              eval_batches=0, ckpt_every=args.ckpt_every, keep_latest=2,
                                              async_ckpt=False),
                            phases=(PhaseConfig(name, n, lr=LRSchedule("cosine", lr_s, lr_s * 0.1,
                                                                        warmup=min(50, n // 10)),
                                                trainable=tuple(trainable)),))
        if mod == "text":
            from jaxlm.models.diled.data import save_codec

            save_codec(cfg_s.ae, out_s)   # the piece table with the run (it is rebuilt from the interpreter's docs)
        return train(run_cfg, ArrayPipeline({k: tr[k] for k in spec_keys}, B, seed=args.seed), mesh, out_s,
                     task=DiLEDTask(cfg_s, init=init), eval_batches=eval_batches, resume=args.resume, stop_at=stop_at,
                     progress=not args.no_progress)

    schedule = args.schedule or DEFAULT_SCHEDULE[mod]
    if schedule == "joint":
        plan = [("main", cfg, steps, lr, out, ())]
    else:  # the original's warm start: AE alone, DDPM on its frozen latents, then joint at a low lr
        ft_lr = args.ft_lr if args.ft_lr is not None else lr * WARM["ft_lr_factor"]
        plan = [("ae", cfg.replace(loss=cfg.loss.replace(ddpm_weight=0.0)), steps, lr, out / "stage1-ae", ()),
                ("ddpm", cfg, args.ddpm_steps, lr, out / "stage2-ddpm", ("^denoiser/",)),
                ("joint", cfg, args.ft_steps, ft_lr, out, ())]
    total, done, prev, summaries = sum(p[2] for p in plan), 0, None, []
    for name, cfg_s, n, lr_s, out_s, trainable in plan:
        stop = None if args.stop_at is None else args.stop_at - done
        if stop is not None and stop <= 0:
            print(f"stopped at step {done} of {total}; continue with --resume")
            return 0
        init = None
        if prev is not None:
            init = load_diled(prev[0], prev[1])
            init.cfg = cfg_s   # the same parameters under this stage's objective
        res = stage(name, cfg_s, n, lr_s, out_s, init, trainable, stop if stop is not None and stop < n else None)
        summaries.append(res.summary)
        if res.final_step < n:
            print(f"stopped at step {done + res.final_step} of {total}; continue with --resume")
            return 0
        done, prev = done + n, (out_s, cfg_s)
    res.summary["stages"] = [{k: s_.get(k) for k in ("steps", "wall_seconds", "final_eval")} for s_ in summaries]
    model = load_diled(out, cfg)
    report = evaluate_run(model, mod, te, args.samples, args.seed, api)
    if mod == "protein":
        report.update(protein_metrics(model, tr, te, report.pop("_generated"), api))
    report["train_summary"] = {k: res.summary.get(k) for k in ("steps", "wall_seconds", "final_eval", "stages")
                               if k in res.summary}
    report["schedule"] = schedule
    if mod == "image":
        save_grid(report.pop("_images"), out / "samples.png")
    (out / "samples.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=1)[:4000])
    return 0


def evaluate_run(model, mod, te, n_samples, seed, api) -> dict:
    """Held-out reconstruction, generated samples (DDPM) and interpolations (lerp, α = 0.2 .. 0.8)."""
    import jax
    import numpy as np

    from jaxlm.models.diled import data as D

    n = min(64, len(next(iter(te.values()))))
    batch = {k: v[:n] for k, v in te.items() if k in ("tokens", "image")}
    rng = jax.random.key(seed)
    rec = np.asarray(api.reconstruct(model, batch))
    z, gen = api.generate(model, n_samples, rng)
    gen = np.asarray(gen)
    a, b = ({k: v[i:i + 1] for k, v in batch.items()} for i in (0, 1))
    inter, _ = api.interpolate(model, a, b, (0.2, 0.4, 0.6, 0.8))
    out = {"modality": mod, "heldout_examples": n, "latent_std_generated": float(np.std(np.asarray(z)))}
    if mod == "image":
        x = batch["image"]
        out["recon_mse"] = float(np.mean((rec - x) ** 2))
        out["_images"] = {"inputs": x[:8], "reconstructions": rec[:8], "samples": gen[:8],
                          "interpolation": np.concatenate([a["image"]] + [np.asarray(i) for i in inter] +
                                                          [b["image"]])}
    elif mod == "text":
        tgt = batch["tokens"][:, 1:]
        L = rec.shape[1]
        mask = tgt[:, :L] != model.cfg.ae.pad_id
        dec = D.text_codec(model.cfg.ae).decode
        out["recon_token_acc"] = float(((rec == tgt[:, :L]) & mask).sum() / mask.sum())
        out["recon_exact"] = float(np.mean([p == t for p, t in zip(dec(rec), dec(tgt))]))
        out["examples"] = [{"input": t, "reconstruction": r} for t, r in
                           zip(dec(tgt[:5]), dec(rec[:5]))]
        out["samples"] = dec(gen)
        out["interpolation"] = [dec(a["tokens"][:, 1:])[0]] + [dec(np.asarray(i))[0]
                                                                         for i in inter] + \
            [dec(b["tokens"][:, 1:])[0]]
    else:
        x = batch["tokens"]
        out["recon_acc_per_position"] = float(np.mean(rec == x))
        out["examples"] = [{"input": t, "reconstruction": r} for t, r in
                           zip(D.decode_protein(x[:5]), D.decode_protein(rec[:5]))]
        out["samples"] = D.decode_protein(gen)
        out["_generated"] = gen
        out["interpolation"] = D.decode_protein(np.concatenate([a["tokens"]] + [np.asarray(i) for i in inter] +
                                                               [b["tokens"]]))
    return out


def _rank(x):
    import numpy as np

    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def protein_metrics(model, tr, te, generated, api) -> dict:
    """Fitness prediction from μ on the held-out split (Spearman, Pearson, MSE), validity (symbols only, 'J' pads
    only at the ends) and novelty (not a training sequence) of generated sequences."""
    import jax
    import numpy as np

    from jaxlm.models.diled import data as D

    out = {}
    if model.cfg.ae.fitness_head:
        from flax import nnx

        g, s = nnx.split(model)
        pred_fn = jax.jit(lambda s, b: (lambda m: m.ae.fitness(m.encode(b)))(nnx.merge(g, s)))
        x, y = te["tokens"], te["fitness"]
        pred = np.concatenate([np.asarray(pred_fn(s, {"tokens": x[i:i + 256]})) for i in range(0, len(x) - 255, 256)])
        y = y[:len(pred)]
        out["fitness_heldout_n"] = int(len(pred))
        out["fitness_spearman"] = float(np.corrcoef(_rank(pred), _rank(y))[0, 1])
        out["fitness_pearson"] = float(np.corrcoef(pred, y)[0, 1])
        out["fitness_mse"] = float(np.mean((pred - y) ** 2))
    seqs = D.decode_protein(generated)
    valid = [bool(re.fullmatch(r"J*[^J]+J*", q)) and "X" not in q for q in seqs]
    train_set = set(D.decode_protein(tr["tokens"]))
    out["generated_validity"] = float(np.mean(valid))
    out["generated_novelty"] = float(np.mean([q not in train_set for q in seqs]))
    return out


def save_grid(images: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(images.items())
    cols = max(len(v) for _, v in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.9, len(rows) * 1.0))
    for r, (name, ims) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(ims):
                ax.imshow(np.clip(np.asarray(ims[c])[..., 0], -1, 1), cmap="gray_r", vmin=-1, vmax=1)
        axes[r, 0].set_title(name, fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def checked(a):
        if a.modality not in MODALITIES:
            raise ConfigError(f"--modality {a.modality!r}: expected one of {list(MODALITIES)}")
        return run(a)

    return run_command(checked, args, args.mesh)


if __name__ == "__main__":
    sys.exit(main())
