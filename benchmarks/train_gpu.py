"""One-GPU training benchmark: a ~1B Llama-architecture model at seq 2048; step time and MFU vs measured peak.

Runs unchanged on an H100/H200 (jax 0.11.x with CUDA) and, with --tiny, on CPU as a smoke check. The model is
TinyLlama-1.1B-shaped (d 2048, 22 layers, 32 heads / 4 KV heads, FFN 5632, vocab 32000), bf16 compute with
float32 master weights and AdamW, rematerialised layers, trained with jaxlm's real train step on a 1x1 mesh.
The bf16 peak is measured in the same run (8192^2 jnp matmul; ~686 TFLOP/s on an H200) and MFU is reported
against it and against the 989 TFLOP/s datasheet number. Appends a dated row to BENCHMARKS.md.

    python benchmarks/train_gpu.py                  # GPU: batch 8 x 2048
    python benchmarks/train_gpu.py --batch 4 --no-remat
    python benchmarks/train_gpu.py --tiny --no-write   # CPU smoke run of the same code path
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--no-remat", action="store_true")
    p.add_argument("--tiny", action="store_true", help="a small config for a CPU smoke run")
    p.add_argument("--no-write", action="store_true")
    return p.parse_args()


def measure_peak(dtype="bfloat16", n=8192, reps=20) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = f(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n ** 3 / best


def main():
    a = parse()
    import jax
    import numpy as np

    from jaxlm.config import preset
    from jaxlm.sharding import make_mesh
    from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig
    from jaxlm.train.metrics import PEAK_FLOPS
    from jaxlm.train.optim import make_optimizer
    from jaxlm.train.state import init_state
    from jaxlm.train.step import flops_per_token, make_train_step, to_device_batch

    dev = jax.devices()[0]
    if a.tiny:
        a.batch, a.seq, a.layers, a.steps, a.warmup = 2, 128, 2, 3, 1
        model = preset("amber-tiny", dtype="bfloat16", param_dtype="float32", remat=not a.no_remat)
    else:
        model = preset("amber-7b", hidden_size=2048, num_layers=a.layers, num_heads=32, num_kv_heads=4, head_dim=64,
                       intermediate_size=5632, vocab_size=32000, norm_eps=1e-5, max_position_embeddings=a.seq,
                       dtype="bfloat16", param_dtype="float32", remat=not a.no_remat)
    cfg = RunConfig(name="gpu-bench", model=model,
                    optim=OptimConfig(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0),
                    train=TrainConfig(seq_len=a.seq, global_batch=a.batch, grad_accum=a.grad_accum),
                    phases=(PhaseConfig("p", 10_000, {"x": 1.0}, lr=LRSchedule("cosine", 3e-4, 3e-5, warmup=100)),))
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    peak = measure_peak(n=1024 if a.tiny else 8192, reps=3 if a.tiny else 20)
    table = next((v for k, v in PEAK_FLOPS if k.lower() in dev.device_kind.lower()), None)
    print(f"measured bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s" +
          (f" (datasheet {table / 1e12:.0f})" if table else ""))

    mesh = make_mesh("1x1", devices=jax.devices()[:1])
    t0 = time.perf_counter()
    mdef, state, sh, tx = init_state(cfg.model, lambda p: make_optimizer(cfg, p), mesh, 0)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    step = make_train_step(mdef, tx, cfg, 1, mesh, sh)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):
        x = rng.integers(0, model.vocab_size, (a.batch, a.seq + 1)).astype(np.int32)
        batches.append(to_device_batch({"inputs": x[:, :-1], "targets": x[:, 1:],
                                        "source_id": np.zeros((a.batch,), np.int32)}, mesh))
    state, m = step(state, batches[0])
    float(m["loss"])
    compile_s = time.perf_counter() - t0
    for i in range(1, a.warmup):
        state, m = step(state, batches[i % 4])
    float(m["loss"])
    times = []
    for i in range(a.steps):
        t1 = time.perf_counter()
        state, m = step(state, batches[i % 4])
        float(m["loss"])
        times.append(time.perf_counter() - t1)
    step_s = float(np.median(times))
    tok_s = a.batch * a.seq / step_s
    fpt = flops_per_token(model, a.seq)
    mfu = tok_s * fpt / peak
    mfu_table = tok_s * fpt / table if table else float("nan")
    try:
        mem = dev.memory_stats() or {}
        peak_mem = mem.get("peak_bytes_in_use", 0) / 2 ** 30
    except Exception:  # CPU has no memory stats
        peak_mem = 0.0
    print(f"model: {n_params / 1e9:.3f}B params, {model.num_layers}L d{model.hidden_size}, batch {a.batch}x{a.seq}, "
          f"remat {model.remat}, grad_accum {a.grad_accum}")
    print(f"init+compile+first step {compile_s:.1f} s; step {step_s * 1e3:.1f} ms (median of {a.steps}); "
          f"{tok_s:.0f} tokens/s; {fpt * tok_s / 1e12:.1f} TFLOP/s; MFU {100 * mfu:.1f}% of measured peak"
          + (f", {100 * mfu_table:.1f}% of datasheet" if table else "") + f"; peak memory {peak_mem:.1f} GiB; "
          f"loss {float(m['loss']):.3f}")
    if a.no_write:
        return
    from benchmarks.record import record, utc_now

    now = utc_now()
    row = (f"| {now} | {dev.device_kind} | jax {jax.__version__} | {n_params / 1e9:.2f}B | {a.batch}x{a.seq} | "
           f"{model.remat} | {step_s * 1e3:.1f} | {tok_s:.0f} | {peak / 1e12:.0f} | {100 * mfu:.1f}% | "
           f"{100 * mfu_table:.1f}% | {peak_mem:.1f} |\n")
    record("Training on one GPU: ~1B Llama, seq 2048 (benchmarks/train_gpu.py)",
           "bf16 compute, float32 master weights, AdamW, jaxlm train step on a 1x1 mesh. MFU = model "
           "FLOPs (MaxText convention) x tokens/s / peak; 'measured' peak = 8192^2 bf16 jnp matmul in the same run.\n\n"
           "| date | device | versions | params | batch | remat | ms/step | tokens/s | measured peak TFLOP/s | "
           "MFU (measured) | MFU (datasheet) | peak GiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|", row)
    print(f"(host {platform.node()})")


if __name__ == "__main__":
    main()
