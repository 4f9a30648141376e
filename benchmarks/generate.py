"""Decode speed of SmolLM2-135M-Instruct on CPU: jaxlm `Generator` vs transformers `generate` (torch), same machine,
same run, same weights (the GGUF dequantized to float32), greedy, batch 1 and 8.

Decode tokens/s = B * (N - 1) / (t(N new tokens) - t(1 new token)): the prefill and the first token are subtracted
out on both sides. Best of --repeats runs. Appends a dated row to BENCHMARKS.md.

    python benchmarks/generate.py [--new 64] [--prompt-len 32] [--repeats 3] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--jaxlm-single-thread" in sys.argv:  # must happen before jax starts its CPU backend
    os.environ["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false"

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def best(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--jaxlm-only", action="store_true", help=argparse.SUPPRESS)  # child process: jaxlm numbers
    ap.add_argument("--jaxlm-single-thread", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from jaxlm.infer.generate import Generator
    from jaxlm.io.gguf import cached_hf_dir, load_gguf, smollm2_gguf_path

    hf_dir = cached_hf_dir(smollm2_gguf_path())
    model, cfg, tok = load_gguf()
    gen = Generator(model, tok)
    if not args.jaxlm_only:
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None

    default_threads = torch.get_num_threads()
    rng = np.random.default_rng(0)
    base = rng.integers(100, cfg.vocab_size - 100, args.prompt_len).tolist()
    N = args.new
    rows = []
    for B in args.batches:
        prompts = [base] * B  # equal lengths: no padding on either side

        def ours(n):
            out = gen.generate_ids(prompts, max_new_tokens=n, ignore_eos=True)
            assert all(len(o) == n for o in out)
            return out

        ids = torch.tensor(prompts, dtype=torch.long)

        def theirs(n):
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                  num_beams=1, pad_token_id=0)
            assert out.shape[1] == ids.shape[1] + n
            return out

        if args.jaxlm_only:
            ours(N)
            ours(1)
            rows.append((B, B * (N - 1) / (best(lambda: ours(N), args.repeats) - best(lambda: ours(1), args.repeats))))
            continue
        same = ours(N)[0] == theirs(N)[0, args.prompt_len:].tolist()  # warm-up (compiles) + a sanity check
        ours(1)
        theirs(1)
        j = {os.cpu_count(): B * (N - 1) / (best(lambda: ours(N), args.repeats) - best(lambda: ours(1), args.repeats))}
        ts = {}
        # torch's default (all cores) and 1 thread: on a shared, oversubscribed machine OpenMP barriers can make
        # the default far slower; the comparison uses whichever is faster here
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            ts[threads] = B * (N - 1) / (best(lambda: theirs(N), args.repeats) - best(lambda: theirs(1), args.repeats))
        torch.set_num_threads(default_threads)
        rows.append((B, j, ts, same))
    if args.jaxlm_only:
        print("JAXLM_RESULT " + json.dumps(dict(rows)))
        return
    # jaxlm with XLA's CPU backend on one thread (set at process start, hence a child process), same treatment as
    # torch's 1-thread setting
    cmd = [sys.executable, __file__, "--jaxlm-only", "--jaxlm-single-thread", "--new", str(N), "--prompt-len",
           str(args.prompt_len), "--repeats", str(args.repeats), "--batches", *map(str, args.batches)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    single = json.loads(out.split("JAXLM_RESULT ", 1)[1].splitlines()[0])
    for B, j, _, _ in rows:
        j[1] = single[str(B)]

    cpu = platform.processor() or platform.machine()
    print(f"\nSmolLM2-135M decode, CPU ({os.cpu_count()} cores, {cpu}), prompt {args.prompt_len}, {N} new tokens, "
          f"float32, greedy; best of {args.repeats}")
    fmt = lambda d: ", ".join(f"{v:.1f} ({k})" for k, v in d.items())  # noqa: E731
    print(f"{'batch':>5} | {'jaxlm tok/s (threads)':>22} | {'transformers tok/s (threads)':>28} | {'ratio':>6} | "
          f"same tokens")
    for B, j, ts, same in rows:
        print(f"{B:>5} | {fmt(j):>22} | {fmt(ts):>28} | {max(j.values()) / max(ts.values()):>6.2f} | {same}")
    if args.no_record:
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    from benchmarks.record import record, utc_now

    intro = ("Ratio = the faster jaxlm setting / the faster transformers setting (threads in parentheses).\n\n"
             "| date (UTC) | machine | versions | batch | jaxlm tok/s (threads) | transformers tok/s (threads) | ratio |\n"
             "|---|---|---|---|---|---|---|")
    now = utc_now("%Y-%m-%d %H:%M")
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU, load {load:.1f}"
    versions = f"jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"
    lines = "".join(f"| {now} | {machine} | {versions} | {B} | {fmt(j)} | {fmt(ts)} | "
                    f"{max(j.values()) / max(ts.values()):.2f} |\n" for B, j, ts, _ in rows)
    record("Generation: SmolLM2-135M decode on CPU (benchmarks/generate.py)", intro, lines)


if __name__ == "__main__":
    main()
