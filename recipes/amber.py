"""Amber (LLM360, 7B Llama): one run, linear warmup then cosine decay to 10% of the peak.

    python -m recipes.amber --mesh 8x1                   # tiny model on the embedded corpus
    python -m recipes.amber --preset paper --mesh -1x1 --data code=... --data language=...

Paper (LLM360/amber-train): AdamW lr 3e-4 (0.9, 0.95, eps 1e-8), weight decay 0.1, clip 1.0, bf16;
warmup 2000 steps, cosine to 3e-5 at step 274,320; batch 2240 x 2048 tokens; 360 evenly spaced checkpoints.
Data mix by tokens: StarCoder 291.92B of 1259.13B (23.2% `code`), the rest `language`.
"""

from __future__ import annotations

import sys

from jaxlm.config import preset
from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig
from recipes.common import Recipe, main as _main, tiny_cosine_run

OPTIM = OptimConfig(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0, no_decay=("norm", "bias"))
MIX = {"language": 0.768, "code": 0.232}

PAPER = RunConfig(
    name="amber-7b",
    model=preset("amber-7b", dtype="bfloat16", param_dtype="float32", remat=True),
    optim=OPTIM,
    train=TrainConfig(seq_len=2048, global_batch=2240, seed=11111, log_every=10, eval_every=762, eval_batches=20,
                      ckpt_every=762, keep_latest=2, keep_release=360),
    phases=(PhaseConfig("main", 274_320, MIX, 0.0, 0.5,
                        LRSchedule("cosine", 3e-4, 3e-5, warmup=2000, decay_steps=274_320 - 2000)),),
)

# Tiny CPU default: same schedule shape (warmup 0.7% then cosine to 10%), peak raised for a 2-layer model.
TINY = tiny_cosine_run("amber-tiny", "amber-tiny", OPTIM, MIX, seed=11111)

RECIPE = Recipe("amber", __doc__.strip(), {"tiny": TINY, "paper": PAPER})


def main(argv=None) -> int:
    return _main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
