"""Pandora's worlds as a benchmark: the inverse-dynamics classifier (IDM) that measures action following, its
shuffled-label control, and the copy-the-last-frame baseline, on the fixed held-out seeds.

For each world: an IDM trained through the engine on real simulator clips from training seeds (random-policy
rounds, balanced classes), and the same IDM trained on the same clips with the labels permuted across examples
(must fall to chance: the most frequent held-out class); held-out accuracy on the first rounds of HELDOUT_SEEDS
(for babyai also on the default mixed bot/random policy's rounds). Then `evaluate(copy_last_frame)` on held-out
seeds with a 4-round rollout: the numbers a world model has to beat. Also the simulator's speed (rounds/s).

    python benchmarks/pandora_world.py                       # both worlds, 300 IDM steps each (CPU: ~15-25 min)
    python benchmarks/pandora_world.py --worlds sprites --steps 60 --n-train 512 --no-record   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TITLE = "Pandora worlds: inverse-dynamics classifier and copy-last-frame baseline (benchmarks/pandora_world.py)"
INTRO = ("Held-out = the fixed HELDOUT_SEEDS (never drawn for training); 32x32 frames, 2 context frames, 4-frame "
         "clips. IDM: conv net (jaxlm.pandora.idm) trained through jaxlm.train on real simulator rounds of training "
         "seeds; 'shuffled' = same data, labels permuted (the control, must be at chance = most frequent held-out "
         "class). Copy-last-frame: next clip = the state's last frame repeated; next = teacher forced over all 4 "
         "rounds, rollout = per round with its own frames fed back; action acc = the real IDM on its clips; cf = "
         "counterfactual mean |Δ| (0..255) between two actions / two sampling seeds.")


def run_world(name: str, args) -> dict:
    from jaxlm.pandora import HELDOUT_SEEDS, make_world
    from jaxlm.pandora.eval import copy_last_frame, evaluate
    from jaxlm.pandora.idm import chance_accuracy, stack, train_idm
    from jaxlm.pandora.pipeline import heldout_transitions

    kw = {"policy": "random"} if name == "babyai" else {}
    world = make_world(name, **kw)
    t0 = time.perf_counter()
    held = heldout_transitions(world, args.heldout, n_rounds=4)
    speed = len(held) / (time.perf_counter() - t0)
    out = {"world": name, "rounds_per_s": speed, "n_train": args.n_train, "steps": args.steps,
           "chance": chance_accuracy(stack(held)["action_class"]), "n_heldout": len(held)}
    root = Path(args.out or tempfile.mkdtemp(prefix="pandora-world-"))
    t0 = time.perf_counter()
    idm = train_idm(world, root / f"{name}-idm", n_train=args.n_train, steps=args.steps, seed=args.seed)
    out["idm_train_s"] = time.perf_counter() - t0
    out["idm_acc"] = idm.accuracy(held)
    shuf = train_idm(world, root / f"{name}-idm-shuffled", n_train=args.n_train, steps=args.steps, seed=args.seed,
                     shuffle_labels=True)
    out["idm_acc_shuffled"] = shuf.accuracy(held)
    eval_world = world
    if name == "babyai":
        eval_world = make_world(name)  # the default mixed bot/random policy
        mixed = heldout_transitions(eval_world, args.heldout, n_rounds=4)
        out["idm_acc_mixed_policy"] = idm.accuracy(mixed)
        out["chance_mixed_policy"] = chance_accuracy(stack(mixed)["action_class"])
    seeds = HELDOUT_SEEDS[:args.eval_seeds]
    out["copy_last_frame"] = evaluate(copy_last_frame(eval_world), eval_world, seeds, n_rounds=4, idm=idm)
    print(json.dumps(out, indent=1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", nargs="+", default=["sprites", "babyai"], choices=["sprites", "babyai"])
    ap.add_argument("--steps", type=int, default=300, help="IDM training steps (batch 64)")
    ap.add_argument("--n-train", type=int, default=4096, help="real training rounds for the IDM")
    ap.add_argument("--heldout", type=int, default=512, help="held-out rounds for the IDM accuracy")
    ap.add_argument("--eval-seeds", type=int, default=64, help="held-out episodes for the copy-last-frame baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="run directory for the IDM checkpoints (default: a temp dir)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    import jax

    from benchmarks.record import load_average

    load0 = load_average()
    rows = [run_world(w, args) for w in args.worlds]
    load1 = load_average()
    table = ["| world | IDM held-out acc | shuffled-label IDM | chance | copy-last next PSNR / SSIM | copy-last "
             "rollout PSNR r1..r4 | copy-last action acc | copy-last cf Δ actions / seeds (sim Δ) | sim rounds/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["copy_last_frame"]
        acc = f"{r['idm_acc']:.3f}"
        if "idm_acc_mixed_policy" in r:
            acc += f" (mixed policy: {r['idm_acc_mixed_policy']:.3f}, chance {r['chance_mixed_policy']:.3f})"
        table.append(f"| {r['world']} | {acc} | {r['idm_acc_shuffled']:.3f} | {r['chance']:.3f} | "
                     f"{c['next_psnr']:.2f} / {c['next_ssim']:.3f} | "
                     + " / ".join(f"{v:.2f}" for v in c["rollout_psnr"])
                     + f" | {c['action_acc']:.3f} | {c['cf_diff_actions']:.2f} / {c['cf_diff_seeds']:.2f} "
                       f"({c['cf_diff_true']:.2f}) | {r['rounds_per_s']:.0f} |")
    text = "\n".join(table)
    print(text)
    if not args.no_record:
        from benchmarks.record import record, utc_now

        head = (f"### {utc_now()} — {platform.machine()} {jax.device_count()} x {jax.devices()[0].platform}; IDM "
                f"{args.steps} steps x 64 on {args.n_train} real rounds, {args.heldout} held-out rounds, "
                f"{args.eval_seeds} held-out episodes x 4 rounds; jax {jax.__version__}; load average "
                f"{load0:.1f} -> {load1:.1f} (machine shared with other agents: times are under load)")
        record(TITLE, INTRO, head + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
