"""Export any checkpoint of a training run to a Hugging Face model directory (config.json + safetensors).

    python -m recipes.export runs/crystal-tiny hf/crystal-tiny-step300 --step 300
    python -m recipes.export runs/crystal-tiny hf/crystal-tiny            # the latest checkpoint
"""

from __future__ import annotations

import sys

from jaxlm.cli import command_parser
from jaxlm.errors import JaxlmError


def main(argv=None) -> int:
    p = command_parser("recipes.export", __doc__.strip(),
                       reads="RUN_DIR/checkpoints/ (orbax, step --step or the latest) and RUN_DIR/config.json; "
                             "--tokenizer (default: the embedded-corpus BPE when the run's model is a -tiny preset, "
                             "else none)",
                       writes="OUT_DIR: config.json, safetensors weights (the family's original key names) and the "
                              "tokenizer files when a tokenizer is known")
    p.add_argument("run_dir", help="a run directory (holding checkpoints/) or a checkpoints directory")
    p.add_argument("out_dir", help="the HF model directory to write (created)")
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
