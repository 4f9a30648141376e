"""What a trained Pandora follows: the sprite (colour) or also the direction? Reads a finished recipe run.

    python -m benchmarks.pandora_direction --run runs/pandora-sprites [--record]

On the sprite world the IDM's 16 classes are colour x direction, so its verdict on a model's clips splits into
colour accuracy (the right sprite moved) and direction accuracy (it moved the right way). For Pandora
(c_instruct/, LLM + adapter), the no-LLM baseline (a2_bow/, bag of words) and the null action:

    acc / colour / direction   the IDM on the model's clips of every round of the first --episodes held-out
                               episodes (teacher forced; chance: 1/16, ~1/3 for colour with 3 sprites, 1/4)
    flip |pix|                 for held-out states whose action, with its direction word swapped for the opposite
                               one, gives a different true clip: mean |pixel| (0..255) between the model's two
                               clips; the simulator's two clips in the `simulator` row
    flip x0 MSE                the same pair's one-step predictions at t = T-1 (E[target | frames, action])
    bow colour / direction     (baseline only) RMS effect of the colour words and of the direction words on the
                               bag-of-words tokens, over the 16 texts "move the {colour} ball {direction}"

A model that follows direction has direction accuracy well above 0.25 and a flip |pix| near the simulator's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def flip_direction(text: str) -> str:
    return re.sub(r"\b(left|right|up|down)\b", lambda m: OPPOSITE[m.group(1)], text)


def flip_pairs(world, n: int, seeds):
    """Up to n held-out (before, action, after, flipped action, flipped after) whose two true clips differ."""
    import numpy as np

    out = []
    for s in seeds:
        t = world.episode(s, 1)[0]
        alt = flip_direction(t.action)
        tb = world.episode(s, 1, actions=[alt])[0].after
        if np.abs(tb.astype(np.int32) - t.after.astype(np.int32)).mean() > 0.5:
            out.append((t.before, t.action, t.after, alt, tb))
        if len(out) == n:
            break
    return out


def split_accuracy(pred_cls, cls) -> dict:
    """IDM accuracy on the sprite world's classes (colour index x 4 + direction index), whole and per part."""
    import numpy as np

    p, c = np.asarray(pred_cls), np.asarray(cls)
    return {"acc": float((p == c).mean()), "colour": float((p // 4 == c // 4).mean()),
            "direction": float((p % 4 == c % 4).mean())}


def analyse(run: Path, episodes: int = 96, n_flip: int = 64, idm_steps: int = 300, recipe_argv=()) -> dict:
    """The tables above for a finished run; `recipe_argv`: the recipe flags the run was made with (its config is
    rebuilt by recipes.pandora.make_config; a mismatch is the loader's CheckpointError naming the fields)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import tempfile

    import recipes.pandora as R
    from jaxlm.pandora import HELDOUT_SEEDS, make_world
    from jaxlm.pandora.idm import train_idm
    from jaxlm.pandora.model import default_tokenizer, encode_actions
    from jaxlm.pandora.task import load_world_model

    world = make_world("sprites", frame_size=32, clip_len=4, context_frames=2)
    cfg = R.make_config(R.build_parser().parse_args(list(recipe_argv)), world)
    tok = default_tokenizer(cfg)
    idm = train_idm(world, Path(tempfile.mkdtemp(prefix="pandora_direction_idm_")), steps=idm_steps, seed=0)
    eps = [world.episode(s, 4) for s in list(HELDOUT_SEEDS)[:episodes]]
    ts = [t for e in eps for t in e]
    before = np.stack([t.before for t in ts])
    cls = np.asarray([t.action_id for t in ts])
    pairs = flip_pairs(world, n_flip, list(HELDOUT_SEEDS)[:4 * n_flip])
    pb = np.stack([p[0] for p in pairs])
    ta, tb = (np.stack([p[i] for p in pairs]).astype(np.float64) for i in (2, 4))
    mad = lambda x, y: float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).mean())  # noqa: E731
    rows = {}
    models = {"pandora (LLM + adapter)": (run / "c_instruct", "llm"),
              "no-LLM baseline (bag of words)": (run / "a2_bow", "bow"),
              "same video model, no action": (run / "c_instruct", "null")}
    loaded = {}
    for name, (path, mode) in models.items():
        m = loaded.setdefault(path, load_world_model(path, cfg))
        fn = m.predict_fn(mode)
        pred = np.concatenate([fn(before[i:i + 32], [t.action for t in ts[i:i + 32]], 0)
                               for i in range(0, len(ts), 32)])
        pc = idm.predict(before, pred)
        g, st = nnx.split(m)

        @jax.jit
        def x0(st, frames, ids, mask, noise, mode=mode, g=g):
            mm = nnx.merge(g, st)
            return mm.first_step_x0(frames, mm.condition(frames, ids, mask, mode), noise)

        frames = jnp.asarray(pb[:, -cfg.context_frames:].astype(np.float32) / 127.5 - 1.0)
        noise = jax.random.normal(jax.random.key(0), (len(pairs), cfg.clip_len, cfg.frame_size, cfg.frame_size, 3))
        xs = [np.asarray(x0(st, frames, *map(jnp.asarray, encode_actions(tok, [p[k] for p in pairs],
                                                                          cfg.max_action_tokens)), noise))
              for k in (1, 3)]
        ca, cb = fn(pb, [p[1] for p in pairs], 0), fn(pb, [p[3] for p in pairs], 0)
        rows[name] = {**split_accuracy(pc, cls), "flip_pix": mad(ca, cb),
                      "flip_x0_mse": float(np.mean((xs[0] - xs[1]) ** 2))}
    rows["simulator"] = {**split_accuracy(idm.predict(before, np.stack([t.after for t in ts])), cls),
                         "flip_pix": mad(ta, tb), "flip_x0_mse": float("nan")}
    bow = loaded[run / "a2_bow"]
    texts = [f"move the {c} ball {d}" for c in ("red", "green", "blue", "yellow") for d in OPPOSITE]
    ids, mask = encode_actions(tok, texts, cfg.max_action_tokens)
    b = np.asarray(bow.bow_tokens(jnp.asarray(ids), jnp.asarray(mask))).reshape(4, 4, -1)
    mu = b.mean((0, 1))
    effects = {"colour": float(np.sqrt(((b.mean(1) - mu) ** 2).mean())),
               "direction": float(np.sqrt(((b.mean(0) - mu) ** 2).mean()))}
    return {"run": str(run), "episodes": episodes, "rounds": len(ts), "flip_pairs": len(pairs), "rows": rows,
            "bow_effects": effects}


def format_rows(rep: dict) -> str:
    lines = ["| model | action acc | colour acc | direction acc | flip: clips |pix| | flip: x0 MSE at T-1 |",
             "|---|---|---|---|---|---|"]
    for name, r in rep["rows"].items():
        lines.append(f"| {name} | {r['acc']:.3f} | {r['colour']:.3f} | {r['direction']:.3f} | {r['flip_pix']:.2f} "
                     f"| {r['flip_x0_mse']:.2e} |")
    e = rep["bow_effects"]
    lines.append(f"\nbag-of-words tokens: RMS colour effect {e['colour']:.4f}, direction effect {e['direction']:.4f}")
    return "\n".join(lines)


TITLE = "Pandora: colour vs direction following (benchmarks/pandora_direction.py)"
INTRO = ("The IDM's verdict on each model's clips split into colour (the right sprite) and direction (the right "
         "way), on every round of the first held-out episodes; flip = the same state with the action's direction "
         "word swapped for the opposite one (mean |pixel| between the two clips; the simulator's in its row).\n\n"
         "| date | run | model | action acc | colour acc | direction acc | flip |pix| | flip x0 MSE | bow colour / "
         "direction effect | load |\n|---|---|---|---|---|---|---|---|---|---|")


def record_rows(rep: dict, path=None):
    from benchmarks.record import load_average, load_label, record, utc_now

    load = load_average()
    e = rep["bow_effects"]
    lines = [f"| {utc_now()} | {rep['run']} ({rep['rounds']} rounds, {rep['flip_pairs']} flips) | {name} | "
             f"{r['acc']:.3f} | {r['colour']:.3f} | {r['direction']:.3f} | {r['flip_pix']:.2f} | "
             f"{r['flip_x0_mse']:.2e} | {e['colour']:.4f} / {e['direction']:.4f} | {load:.1f} "
             f"({platform.machine()}, {os.cpu_count()} cores{load_label(load)}) |" for name, r in rep["rows"].items()]
    return record(TITLE, INTRO, "\n".join(lines), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pandora_direction", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished recipes.pandora output directory (sprites world)")
    p.add_argument("--episodes", type=int, default=96)
    p.add_argument("--record", action="store_true")
    p.add_argument("--recipe-args", default="", help="the recipe flags the run was trained with, e.g. "
                   "'--high-t-fraction 0.5' (default: the recipe's defaults)")
    args = p.parse_args(argv)
    run = Path(args.run)
    for sub in ("a_dynamics", "c_instruct", "a2_bow"):
        if not (run / sub / "checkpoints").is_dir():
            from jaxlm.errors import DataFileNotFoundError

            raise DataFileNotFoundError(f"{run / sub}: no checkpoints (run python -m recipes.pandora --out {run})")
    rep = analyse(run, args.episodes, recipe_argv=args.recipe_args.split())
    print(format_rows(rep))
    (run / "direction.json").write_text(json.dumps(rep, indent=2))
    if args.record:
        print(record_rows(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
