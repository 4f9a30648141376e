"""CrystalCoder ("Crystal"): three stages from language to code, muP, per-phase warmup + linear decay.

    python -m recipes.crystal --mesh 8x1                 # tiny model on the embedded corpus, ~2-3 min on CPU
    python -m recipes.crystal --preset paper --mesh -1x1 --data code=... --data language=...   # 7B, cluster

Paper (LLM360/crystalcoder-train, Cerebras params.yaml): batch 2112 x 2048, AdamW (0.9, 0.95, eps 1e-9),
weight decay 0.1, clip 1.0, muP lr x 0.0625 on decoder matrices.
  phase 1  79,721 steps, SlimPajama (code = its GitHub share ~5%)   warmup 86 -> 0.012, linear toward 1.2408e-4
           over 294,337 steps (stopped part-way)
  phase 2 214,387 steps, 37.2% SlimPajama + 62.8% StarCoder, FIM 0.9 (SPM 0.5)   warmup 86 -> 0.0087825,
           linear over 214,301 steps to 1.3679e-4
  phase 3  27,728 steps, ~83% code (Python/HTML/JS/CSS + 3.3% StarCoder), 16.7% SlimPajama, FIM 0.3
           warmup 276 -> 0.002, linear over 27,452 steps to 2e-4
Sources map onto two names: `code` (StarCoder/GitHub) and `language` (SlimPajama w/o GitHub).
"""

from __future__ import annotations

import dataclasses
import sys

from jaxlm.config import preset
from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig
from recipes.common import Recipe, main as _main

OPTIM = OptimConfig(b1=0.9, b2=0.95, eps=1e-9, weight_decay=0.1, clip_norm=1.0, mup_width_scale=0.0625,
                    no_decay=("norm", "bias"))

PAPER_PHASES = (
    PhaseConfig("phase1", 79_721, {"language": 0.9504, "code": 0.0496}, 0.0, 0.5,
                LRSchedule("linear", 0.012, 1.2408e-4, warmup=86, decay_steps=294_337)),
    PhaseConfig("phase2", 214_387, {"language": 0.372, "code": 0.628}, 0.9, 0.5,
                LRSchedule("linear", 0.0087825, 1.3679e-4, warmup=86, decay_steps=214_301)),
    PhaseConfig("phase3", 27_728, {"code": 0.833, "language": 0.167}, 0.3, 0.5,
                LRSchedule("linear", 0.002, 2e-4, warmup=276, decay_steps=27_452)),
)

PAPER = RunConfig(
    name="crystal-7b",
    model=preset("crystalcoder-7b", dtype="bfloat16", param_dtype="float32", remat=True),
    optim=OPTIM,
    train=TrainConfig(seq_len=2048, global_batch=2112, grad_accum=1, seed=0, log_every=10, eval_every=5000,
                      eval_batches=20, ckpt_every=1000, keep_latest=2,
                      keep_release=143),  # LLM360 lists 143 CrystalCoder checkpoints (count not in our notes)
    phases=PAPER_PHASES,
)

# Tiny CPU default: the same three stages and schedule shapes (phase-1 decay horizon 294,337/79,721 = 3.69x the
# phase, FIM 0 / 0.9 / 0.3, the same mixtures and peaks), at a size that trains in minutes on 2 cores.
# muP: mup_width_scale = base width / model width = 256 / 4096 for the 7B. The 64-wide tiny model is narrower than
# the base width, so its hidden matrices take the base learning rate (the scale is clamped at 1).
TINY_STEPS = (150, 150, 150)
TINY = RunConfig(
    name="crystal-tiny",
    model=preset("crystalcoder-tiny", dtype="bfloat16", param_dtype="float32"),
    optim=dataclasses.replace(OPTIM, mup_width_scale=min(1.0, 256 / 64)),
    train=TrainConfig(seq_len=128, global_batch=16, seed=0, log_every=25, eval_every=0, eval_batches=2,
                      ckpt_every=50, keep_latest=2, keep_release=3),
    phases=(
        PhaseConfig("phase1", TINY_STEPS[0], PAPER_PHASES[0].weights, 0.0, 0.5,
                    LRSchedule("linear", 0.012, 1.2408e-4, warmup=8, decay_steps=round(TINY_STEPS[0] * 294_337 / 79_721))),
        PhaseConfig("phase2", TINY_STEPS[1], PAPER_PHASES[1].weights, 0.9, 0.5,
                    LRSchedule("linear", 0.0087825, 1.3679e-4, warmup=8, decay_steps=TINY_STEPS[1] - 8)),
        PhaseConfig("phase3", TINY_STEPS[2], PAPER_PHASES[2].weights, 0.3, 0.5,
                    LRSchedule("linear", 0.002, 2e-4, warmup=8, decay_steps=TINY_STEPS[2] - 8)),
    ),
)

RECIPE = Recipe("crystal", __doc__.strip(), {"tiny": TINY, "paper": PAPER})


def main(argv=None) -> int:
    return _main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
