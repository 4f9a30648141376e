"""MobiLlama (0.5B, one FFN shared by all blocks): linear warmup then cosine, on Amber's data.

    python -m recipes.mobillama --mesh 8x1               # tiny model on the embedded corpus
    python -m recipes.mobillama --preset paper --mesh -1x1 --data code=... --data language=...

Repo (mbzuai-oryx/MobiLlama main_mobillama.py): AdamW lr 3e-5 -> 3e-6 cosine (0.9, 0.95), warmup 2000,
weight decay 0.1, clip 1.0, bf16; 20 nodes x 8 GPUs x 8 = 1280 x 2048 tokens per step over the Amber dataset
(360 chunks x 1,706,976 samples -> 360 x 1333 = 479,880 steps, derived). Preset `paper-1b` = the "large-base"
(unshared FFN, lr 3e-4 -> 3e-5, main_largebase.py).
"""

from __future__ import annotations

import dataclasses
import sys

from jaxlm.config import preset
from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig
from recipes.common import Recipe, main as _main, tiny_cosine_run

OPTIM = OptimConfig(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0, no_decay=("norm", "bias"))
MIX = {"language": 0.768, "code": 0.232}
STEPS = 360 * (1_706_976 // 1280)

PAPER = RunConfig(
    name="mobillama-0.5b",
    model=preset("mobillama-0.5b", dtype="bfloat16", param_dtype="float32", remat=True),
    optim=OPTIM,
    train=TrainConfig(seq_len=2048, global_batch=1280, seed=42, log_every=10, eval_every=1333, eval_batches=20,
                      ckpt_every=1333, keep_latest=2, keep_release=360),
    phases=(PhaseConfig("main", STEPS, MIX, 0.0, 0.5, LRSchedule("cosine", 3e-5, 3e-6, warmup=2000,
                                                                 decay_steps=STEPS - 2000)),),
)
PAPER_1B = dataclasses.replace(
    PAPER, name="mobillama-1b", model=preset("mobillama-1b", dtype="bfloat16", param_dtype="float32", remat=True),
    phases=(dataclasses.replace(PAPER.phases[0], lr=LRSchedule("cosine", 3e-4, 3e-5, warmup=2000,
                                                               decay_steps=STEPS - 2000)),))

# Tiny CPU default: same shape (warmup, cosine to 10%), peak raised for a 2-layer model.
TINY = tiny_cosine_run("mobillama-tiny", "mobillama-tiny", OPTIM, MIX, seed=42)

RECIPE = Recipe("mobillama", __doc__.strip(),
                {"tiny": TINY, "paper": PAPER, "paper-1b": PAPER_1B})


def main(argv=None) -> int:
    return _main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
