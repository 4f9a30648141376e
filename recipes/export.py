"""Export any checkpoint of a training run to a Hugging Face model directory (config.json + safetensors).

    python -m recipes.export runs/crystal-tiny hf/crystal-tiny-step300 --step 300
    python -m recipes.export runs/crystal-tiny hf/crystal-tiny            # the latest checkpoint
"""

from __future__ import annotations

import argparse
import sys

from jaxlm.errors import JaxlmError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.export", description=__doc__.strip().splitlines()[0])
    p.add_argument("run_dir", help="a run directory (holding checkpoints/) or a checkpoints directory")
    p.add_argument("out_dir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer to save beside the weights (default: the embedded-corpus BPE when the run used it)")
    a = p.parse_args(argv)
    try:
        import json
        from pathlib import Path

        from jaxlm.train.checkpoint import export_hf

        tok = None
        cfg_path = Path(a.run_dir) / "config.json"
        from jaxlm import data as D

        if a.tokenizer:
            tok = D.load_tokenizer(a.tokenizer)
        elif cfg_path.exists() and json.loads(cfg_path.read_text())["name"].endswith("-tiny"):
            tok = D.default_tokenizer()
        out = export_hf(a.run_dir, a.out_dir, step=a.step, tokenizer=tok)
    except JaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
