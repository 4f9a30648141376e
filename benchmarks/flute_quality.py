"""Held-out perplexity of SmolLM2-135M-Instruct under FLUTE LUT quantization (the shape of FLUTE's Table 3).

    python -m benchmarks.flute_quality                 # full table (NFL rows take several minutes on CPU)
    python -m benchmarks.flute_quality --quick         # NF rows only

Rows: unquantized; NF4 and NF3 at G=64 and G=128; NFL (learned NF scales) at W4G128 and W3G128; and, as the
baseline a user would otherwise pick, round-to-nearest with a *uniform* table (INT4/INT3, symmetric absmax).
Text: the fixed held-out slice of pydoc_data.topics (recipes/flute.py). All linear layers of the decoder blocks
are quantized; the tied embedding / head stays in full precision. The table is appended to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def int_table(bits: int) -> np.ndarray:
    """Symmetric integer RTN as a table: levels k / (2^(b-1) - 1), k = -2^(b-1) .. 2^(b-1) - 1 (scale = absmax/7)."""
    h = 2 ** (bits - 1)
    return np.arange(-h, h, dtype=np.float64) / (h - 1)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the NFL rows")
    ap.add_argument("--eval-seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--calib-seqs", type=int, default=4)
    ap.add_argument("--nfl-steps", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args(argv)

    import jax

    from jaxlm.io.gguf import load_gguf, smollm2_gguf_path
    from jaxlm.quant import quantize
    from jaxlm.quant.formats import QuantFormat
    from recipes.flute import perplexity, token_blocks

    model, cfg, tok = load_gguf(smollm2_gguf_path())
    heldout = token_blocks(tok, "heldout", args.eval_seqs, args.seq_len)
    calib = token_blocks(tok, "calib", args.calib_seqs, args.seq_len)
    rows = []
    t = time.time()
    base = perplexity(model, heldout)
    rows.append(("unquantized (fp32)", "-", "-", base, 32.0, time.time() - t))
    print(f"{rows[-1][0]:28s} ppl {base:.3f}", flush=True)

    configs = [("NF", 4, 64, "nf", None), ("NF", 4, 128, "nf", None), ("NF", 3, 64, "nf", None),
               ("NF", 3, 128, "nf", None),
               ("INT (uniform RTN)", 4, 128, "nf", int_table(4)),
               ("INT (uniform RTN)", 3, 128, "nf", int_table(3))]
    if not args.quick:
        configs += [("NFL", 4, 128, "nfl", None), ("NFL", 3, 128, "nfl", None)]
    for name, bits, g, method, table in configs:
        t = time.time()
        m, _, _ = load_gguf(smollm2_gguf_path())
        quantize(m, bits=bits, group_size=g, method=method, table=table,
                 calib_ids=calib if method == "nfl" else None, nfl_steps=args.nfl_steps)
        ppl = perplexity(m, heldout)
        bpw = QuantFormat.make(bits, g, table).bytes_per_weight(scale_bytes=2) * 8
        rows.append((name, bits, g, ppl, bpw, time.time() - t))
        print(f"{name:20s} W{bits}G{g:<4d} ppl {ppl:.3f} (x{ppl / base:.3f})  {time.time() - t:.0f}s", flush=True)
        del m

    header = ("| method | bits | G | held-out ppl | ppl / fp32 | bits per weight (bf16 scales) | time s |\n"
              "|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {n} | {b} | {g} | {p:.3f} | {p / base:.3f} | {bpw:.3f} | {s:.0f} |\n"
                   for n, b, g, p, bpw, s in rows)
    print(header + body)
    if args.no_write:
        return rows
    import jaxlib

    from benchmarks.record import record, utc_now

    machine = f"{platform.machine()} {jax.device_count()} x {jax.devices()[0].platform}"
    record(
        "FLUTE quality: SmolLM2-135M-Instruct held-out perplexity (benchmarks/flute_quality.py)",
        f"Text: the fixed held-out slice of Python's `pydoc_data.topics` (every 5th topic by name), "
        f"{args.eval_seqs} x {args.seq_len} tokens, GGUF tokenizer. NFL calibrates on other topics "
        f"({args.calib_seqs} x {args.seq_len} tokens, {args.nfl_steps} Adam steps per layer, layer-output MSE with "
        "a straight-through estimator). All q/k/v/o/gate/up/down layers quantized; the tied embedding stays fp32. "
        "K=576 is not a multiple of 128: at G=128 those layers are zero-padded to 640 rows (the last group holds "
        "64 real weights). INT rows: the same machinery with the symmetric integer table k/(2^(b-1)-1), "
        "k = -2^(b-1)..2^(b-1)-1 (plain round-to-nearest INT quantization, scale = group absmax / (2^(b-1)-1)).",
        f"### {utc_now()} — {machine}; python {platform.python_version()}, jax {jax.__version__} / jaxlib "
        f"{jaxlib.__version__}\n\n" + header + body)
    return rows


if __name__ == "__main__":
    main()
