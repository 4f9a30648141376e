"""A grid PNG of digits from the models benchmarks/diled_eval.py trained (seed 0 by default): held-out inputs, then
for DiLED (joint), two-stage and VAE their reconstructions and generated samples (DDPM latents for DiLED and
two-stage, N(0, I) prior for the VAE), all decoded by the same kind of conv decoder.

    python benchmarks/diled_eval.py            # trains runs/diled-bench/seed*/{joint,two_stage,vae,ae}
    python benchmarks/diled_grid.py            # -> docs/images/diled_digits_models.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

MODELS = (("DiLED joint", "joint", "ddpm"), ("two-stage", "two_stage", "ddpm"), ("VAE", "vae", "prior"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/diled-bench/seed0")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--out", default="docs/images/diled_digits_models.png")
    args = ap.parse_args(argv)

    import jax

    from jaxlm.diled.task import load_diled
    from jaxlm.models.diled import api
    from jaxlm.models.diled import data as D
    from recipes.diled import save_grid

    x = D.digits()["heldout"]["image"][:args.n]
    rows = {"held-out inputs": x}
    for label, sub, gen in MODELS:
        m = load_diled(Path(args.runs) / sub)
        rows[f"{label}: reconstructions"] = np.asarray(api.reconstruct(m, {"image": x}))
        key = jax.random.key(7)
        if gen == "prior":
            s = api.decode(m, jax.random.normal(key, (args.n, m.cfg.latent_dim)))
        else:
            _, s = api.generate(m, args.n, key)
        rows[f"{label}: samples"] = np.asarray(s)
    save_grid(rows, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
