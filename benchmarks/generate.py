"""Decode speed of SmolLM2-135M-Instruct on CPU: jaxlm `Generator` vs transformers `generate` (torch), same machine,
same run, same weights (the GGUF's Q4_1 weights dequantized to float32), greedy, batch 1 and 8.

Decode tokens/s = B * (N - 1) / (t(N new tokens) - t(1 new token)): the prefill and the first token are subtracted
out on both sides. Four worker processes — jaxlm and transformers, each at all cores and pinned to one core
(benchmarks/interleave.py) — run interleaved rounds; each setting's rate is the median over rounds, and the ratio
is the faster jaxlm setting over the faster transformers setting. Appends a dated row to BENCHMARKS.md.

    python benchmarks/generate.py [--new 64] [--prompt-len 32] [--rounds 3] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--worker", choices=("jaxlm", "transformers"), help=argparse.SUPPRESS)  # child process
    return ap.parse_args()


def worker(args):
    """One implementation; unit i decodes batch args.batches[i % len] for N and for 1 new tokens."""
    from benchmarks.interleave import apply_threads, serve

    threads = apply_threads()
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import numpy as np

    from jaxlm.io.gguf import cached_hf_dir, load_gguf, smollm2_gguf_path

    N, P = args.new, args.prompt_len
    if args.worker == "jaxlm":
        import jax

        from jaxlm.infer.generate import Generator

        model, cfg, tok = load_gguf()
        gen = Generator(model, tok)
        vocab = cfg.vocab_size

        def decode(prompts, n):
            out = gen.generate_ids(prompts, max_new_tokens=n, ignore_eos=True)
            assert all(len(o) == n for o in out)
            return list(out[0])

        info = {"version": f"jax {jax.__version__}"}
    else:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        hf = AutoModelForCausalLM.from_pretrained(cached_hf_dir(smollm2_gguf_path()), dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None
        vocab = hf.config.vocab_size

        def decode(prompts, n):
            ids = torch.tensor(prompts, dtype=torch.long)
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                  num_beams=1, pad_token_id=0)
            assert out.shape[1] == P + n
            return out[0, P:].tolist()

        info = {"version": f"torch {torch.__version__}, transformers {transformers.__version__}",
                "threads_used": torch.get_num_threads()}
    base = np.random.default_rng(0).integers(100, vocab - 100, P).tolist()

    def run(i):
        B = args.batches[i % len(args.batches)]
        prompts = [base] * B  # equal lengths: no padding on either side
        t0 = time.perf_counter()
        tokens = decode(prompts, N)
        tn = time.perf_counter() - t0
        t0 = time.perf_counter()
        decode(prompts, 1)
        t1 = time.perf_counter() - t0
        return {"B": B, "rate": B * (N - 1) / max(tn - t1, 1e-9), "tokens": tokens}

    serve(run, info)


def main():
    args = parse()
    if args.worker:
        return worker(args)
    from benchmarks.interleave import Pool, load_average

    ncpu = os.cpu_count()
    base = [sys.executable, __file__, "--new", str(args.new), "--prompt-len", str(args.prompt_len), "--batches",
            *map(str, args.batches)]
    specs = {(impl, t or ncpu): (base + ["--worker", impl], t) for t in (None, 1) for impl in ("jaxlm", "transformers")}
    load0 = load_average()
    nb = len(args.batches)
    with Pool({f"{k[0]} {k[1]}t": v for k, v in specs.items()}) as pool:
        res = pool.measure(args.rounds, nb, warmup=nb)  # warm-up: every batch size once (compiles)
    load1 = load_average()
    rate = {}  # (impl, threads, B) -> median tok/s
    same = {}
    for (impl, t) in specs:
        r = res[f"{impl} {t}t"]
        for B in args.batches:
            vals = [v for v in r["values"] if v["B"] == B]
            rate[impl, t, B] = statistics.median(v["rate"] for v in vals)
            same.setdefault(B, []).append(vals[0]["tokens"])
    jv = res[f"jaxlm {ncpu}t"]["version"]
    tv = res[f"transformers {ncpu}t"]["version"]
    fmt = lambda impl, B: ", ".join(f"{rate[i, t, b]:.1f} ({t})" for (i, t, b) in rate if i == impl and b == B)  # noqa: E731
    best = lambda impl, B: max(v for (i, t, b), v in rate.items() if i == impl and b == B)  # noqa: E731
    cpu = platform.processor() or platform.machine()
    print(f"\nSmolLM2-135M decode, CPU ({ncpu} cores, {cpu}), prompt {args.prompt_len}, {args.new} new tokens, "
          f"float32, greedy; median of {args.rounds} interleaved rounds; load average {load0:.2f} -> {load1:.2f}")
    print(f"{'batch':>5} | {'jaxlm tok/s (threads)':>24} | {'transformers tok/s (threads)':>28} | {'ratio':>6} | "
          f"same tokens")
    for B in args.batches:
        agree = all(t == same[B][0] for t in same[B])
        print(f"{B:>5} | {fmt('jaxlm', B):>24} | {fmt('transformers', B):>28} | "
              f"{best('jaxlm', B) / best('transformers', B):>6.2f} | {agree}")
    if args.no_record:
        return
    from benchmarks.record import record, utc_now

    intro = ("Ratio = the faster jaxlm setting / the faster transformers setting (threads in parentheses).\n\n"
             "| date (UTC) | machine | versions | batch | jaxlm tok/s (threads) | transformers tok/s (threads) | ratio |\n"
             "|---|---|---|---|---|---|---|")
    now = utc_now("%Y-%m-%d %H:%M")
    busy = " (under load: shared machine)" if max(load0, load1) > 1.5 else ""
    machine = f"{ncpu}-core {platform.machine()} CPU, load {load0:.1f} -> {load1:.1f}{busy}, interleaved workers"
    lines = "".join(f"| {now} | {machine} | {jv}, {tv} | {B} | {fmt('jaxlm', B)} | {fmt('transformers', B)} | "
                    f"{best('jaxlm', B) / best('transformers', B):.2f} |\n" for B in args.batches)
    record("Generation: SmolLM2-135M decode on CPU (benchmarks/generate.py)", intro, lines)


if __name__ == "__main__":
    main()
