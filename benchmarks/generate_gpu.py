"""Batch-1 decode of a ~1B decoder on one GPU against the HBM-bandwidth roofline (H100 / H200).

Model: the `mobillama-1b` preset (22 layers, width 2048, 1.26B parameters) with random bfloat16 weights (nothing is
downloaded; speed does not depend on the values). One decode step must read every weight once plus the KV cache, so
the roofline is  tokens/s <= HBM bandwidth / (parameter bytes + KV-cache bytes read per step).

Two numbers: the device step rate (decode steps dispatched back to back, tokens kept on device) and the end-to-end
`Generator.generate_ids` rate (host reads each token: what streaming users see).

    python benchmarks/generate_gpu.py [--preset mobillama-1b] [--prompt 128] [--steps 256] [--hbm-gbps N]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# peak HBM bandwidth, GB/s (vendor figures)
HBM_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0,
            "A100-SXM4-80GB": 2039.0, "A100": 1555.0}


def hbm_for(kind: str) -> float | None:
    for name, bw in HBM_GBPS.items():
        if name.lower() in kind.lower():
            return bw
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mobillama-1b")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--hbm-gbps", type=float, default=None, help="override the bandwidth used for the roofline")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    from flax import nnx

    from jaxlm.config import preset
    from jaxlm.infer.generate import Generator
    from jaxlm.infer.sampling import SamplingParams
    from jaxlm.models.decoder import DecoderLM

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", str(dev))
    cfg = preset(args.preset, dtype=args.dtype, param_dtype=args.dtype)
    t0 = time.perf_counter()
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    g = Generator(model)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(g.state))
    print(f"{args.preset}: {cfg.num_params() / 1e9:.2f}B params, {param_bytes / 1e9:.2f} GB ({args.dtype}); "
          f"init {time.perf_counter() - t0:.1f} s on {kind}")

    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, args.prompt).tolist()
    N = args.steps

    # device step rate
    batch = g.new_batch(1, args.prompt + N + 2)
    batch.add([0], [prompt], [SamplingParams()])
    for _ in range(3):  # compile + warm
        batch.step()
    jax.block_until_ready(batch.tok)
    t = time.perf_counter()
    for _ in range(N - 4):
        batch.step()
    jax.block_until_ready(batch.tok)
    dt_dev = (time.perf_counter() - t) / (N - 4)
    cap = batch.capacity
    kv_bytes = batch.cache.k.nbytes + batch.cache.v.nbytes  # the step attends over the whole preallocated cache

    # end to end (host reads every token)
    g.generate_ids([prompt], max_new_tokens=N)
    g.generate_ids([prompt], max_new_tokens=1)
    t = time.perf_counter()
    g.generate_ids([prompt], max_new_tokens=N)
    tn = time.perf_counter() - t
    t = time.perf_counter()
    g.generate_ids([prompt], max_new_tokens=1)
    t1 = time.perf_counter() - t
    dt_e2e = (tn - t1) / (N - 1)

    bw = args.hbm_gbps or hbm_for(kind)
    roof = bw * 1e9 / (param_bytes + kv_bytes) if bw else float("nan")
    print(f"\nbatch-1 decode, prompt {args.prompt}, {N} steps, cache capacity {cap} "
          f"(KV {kv_bytes / 1e6:.0f} MB), {kind}, HBM {bw} GB/s")
    print(f"{'':>22} | {'ms/token':>8} | {'tokens/s':>8} | {'% of roofline':>13}")
    for name, dt in (("roofline", 1 / roof if roof == roof else float("nan")), ("device steps", dt_dev),
                     ("generate_ids (e2e)", dt_e2e)):
        print(f"{name:>22} | {dt * 1e3:>8.3f} | {1 / dt:>8.1f} | {100 * (1 / dt) / roof:>12.1f}%")
    if args.no_record:
        return
    from benchmarks.record import record, utc_now

    now = utc_now("%Y-%m-%d %H:%M")
    row = (f"| {now} | {kind} ({platform.node()}) | jax {jax.__version__} | {args.preset} {args.dtype}, prompt "
           f"{args.prompt}, cap {cap} | {roof:.0f} | {1 / dt_dev:.0f} | {1 / dt_e2e:.0f} | "
           f"{100 / dt_dev / roof:.0f}% |\n")
    record("Generation: batch-1 decode of a ~1B model on GPU vs the HBM roofline (benchmarks/generate_gpu.py)",
           "| date (UTC) | device | versions | model | roofline tok/s | device tok/s | e2e tok/s | "
           "device % of roofline |\n|---|---|---|---|---|---|---|---|", row)


if __name__ == "__main__":
    main()
