"""Pandora's evaluation table in BENCHMARKS.md: the rows of a finished `python -m recipes.pandora` run.

    python -m benchmarks.pandora_eval --run runs/pandora-sprites     # re-reads metrics.json and records it
    python -m recipes.pandora --record                               # trains, evaluates and records in one go

One row per model (Pandora, the no-LLM bag-of-words baseline, the same video model with no action, copy-last-frame):
next-clip PSNR/SSIM from the true state, PSNR per round of a rollout, IDM action-following accuracy, counterfactual
divergence (different actions vs different seeds from the same state), plus the IDM's own held-out and
shuffled-label accuracies. The load average is recorded: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

TITLE = "Pandora world model (recipes.pandora, held-out seeds)"
INTRO = ("Each run: the tiny Pandora (SmolLM2-135M-Instruct truncated, frozen; Q-Former adapter; space-time DiT) "
         "trained in three stages on CPU, scored by jaxlm.pandora.eval.evaluate on held-out episodes. PSNR in dB; "
         "action acc = the inverse-dynamics classifier's accuracy on the model's clips (its accuracy on the "
         "simulator's clips in the IDM column); cf = mean |pixel| difference (0..255) between clips of two "
         "actions / two sampling seeds from the same state.\n\n"
         "| date | world | steps a/b/c | model | next PSNR | next SSIM | rollout PSNR r1..rN | action acc | "
         "cf actions | cf seeds | IDM held-out / shuffled / chance | load |\n"
         "|---|---|---|---|---|---|---|---|---|---|---|---|")


def record_rows(report: dict, path=None) -> Path:
    from benchmarks.record import load_average, load_label, record, utc_now

    load = load_average()
    i = report["idm"]
    idm = f"{i['heldout_acc']:.2f} / {i['shuffled_label_acc']:.2f} / {i['chance']:.2f}"
    steps = "/".join(str(s) for s in report["steps"])
    lines = []
    for name, r in report["rows"].items():
        roll = " / ".join(f"{v:.1f}" for v in r["rollout_psnr"])
        acc = f"{r['action_acc']:.3f}" if "action_acc" in r else "-"
        lines.append(f"| {utc_now()} | {report['world']} | {steps} | {name} | {r['next_psnr']:.2f} | "
                     f"{r['next_ssim']:.3f} | {roll} | {acc} | {r['cf_diff_actions']:.2f} | "
                     f"{r['cf_diff_seeds']:.2f} | {idm} | {load:.1f} ({platform.machine()}, "
                     f"{os.cpu_count()} cores{load_label(load)}) |")
    return record(TITLE, INTRO, "\n".join(lines), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pandora_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a recipes.pandora output directory (holds metrics.json)")
    args = p.parse_args(argv)
    f = Path(args.run) / "metrics.json"
    if not f.exists():
        from jaxlm.errors import DataFileNotFoundError

        raise DataFileNotFoundError(f"{f}: no metrics.json (run python -m recipes.pandora --out {args.run} first)")
    print(record_rows(json.loads(f.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
