"""SSD benchmark: chunked SSD vs sequential scan vs causal softmax attention (plain XLA) vs transformers' pure-torch
`mamba2_chunk_scan`, time and peak memory against sequence length; forward+backward time of the two XLA SSD paths
(what training runs) and of the CPU default of `kernels.ssd.ssd` ("hybrid": the scan forward, the chunked
backward, each the faster one here); plus decode-state
memory per token. The Pallas kernel (kernels/ssd/pallas.py) is GPU-only: its interpret mode on CPU is a
correctness check, not a timing, so it is not timed here.

    python -m benchmarks.ssd                      # 1k..16k on CPU, appends a row block to BENCHMARKS.md
    python -m benchmarks.ssd --lengths 1024,2048 --no-write

Peak memory = XLA's compiled temp + output buffer sizes (`compiled.memory_analysis()`), i.e. what the computation
needs beyond its inputs; it is exact for a compiled program and does not depend on machine load. Time = median wall
time of `--repeats` runs after compilation. The torch column times the function a transformers user runs on CPU
(`transformers.models.mamba2.modeling_mamba2.mamba2_chunk_scan`, same chunk size), memory not measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kernels.ssd import ssd_chunked, ssd_hybrid, ssd_scan

ROOT = Path(__file__).resolve().parents[1]


def causal_attention(q, k, v):
    """Plain XLA causal softmax attention, q/k [B,T,H,N], v [B,T,H,P] (the O(T^2) alternative)."""
    t = q.shape[1]
    s = jnp.einsum("bthn,bshn->bhts", q, k) / np.sqrt(q.shape[-1])
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    return jnp.einsum("bhts,bshp->bthp", jax.nn.softmax(s, -1), v)


def _bench(fn, args, repeats):
    compiled = jax.jit(fn).lower(*args).compile()
    ma = compiled.memory_analysis()
    peak = None if ma is None else int(ma.temp_size_in_bytes + ma.output_size_in_bytes)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak


def _bench_torch(x, dt, A, B, C, chunk, repeats):
    try:
        import torch
        from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan
    except Exception:  # noqa: BLE001 - torch is optional for this benchmark
        return None
    tx, tdt, tA, tB, tC = (torch.from_numpy(np.array(v)) for v in (x, dt, A, B, C))
    times = []
    with torch.no_grad():
        mamba2_chunk_scan(tx, tdt, tA, tB, tC, chunk_size=chunk)
        for _ in range(repeats):
            t0 = time.perf_counter()
            mamba2_chunk_scan(tx, tdt, tA, tB, tC, chunk_size=chunk)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_memory(lengths):
    """Bytes of generation state per sequence: Mamba-2 130M SSMCache (constant) vs a same-width Transformer KV cache."""
    from jaxlm.config import DecoderConfig
    from jaxlm.models.decoder import KVCache
    from jaxlm.models.mamba2 import SSMCache, mamba2_preset

    mcfg = mamba2_preset("mamba2-130m")
    dcfg = DecoderConfig(vocab_size=50288, hidden_size=768, num_layers=24, num_heads=12, num_kv_heads=12,
                         head_dim=64, intermediate_size=3072)
    nbytes = lambda tree: sum(int(np.prod(l.shape)) * l.dtype.itemsize for l in jax.tree.leaves(tree))
    rows = []
    for t in lengths:
        ssm = nbytes(jax.eval_shape(lambda: SSMCache.zeros(mcfg, 1)))
        kv = nbytes(jax.eval_shape(lambda: KVCache.zeros(dcfg, 1, t)))
        rows.append((t, ssm, kv))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--state", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = ap.parse_args(argv)
    lengths = [int(v) for v in args.lengths.split(",")]
    h, p, n = args.heads, args.head_dim, args.state
    rng = np.random.default_rng(0)
    rows = []
    hdr = (f"{'T':>6} | {'chunked s':>9} | {'scan s':>8} | {'attn s':>8} | {'torch s':>8} | {'chunked MiB':>11} | "
           f"{'scan MiB':>8} | {'attn MiB':>9} | scan/chunked | attn/chunked | torch/chunked")
    print(hdr)
    for t in lengths:
        x = jnp.asarray(rng.normal(size=(1, t, h, p)), jnp.float32)
        dt = jnp.asarray(rng.uniform(0.001, 0.1, size=(1, t, h)), jnp.float32)
        A = -jnp.asarray(rng.uniform(1, 8, size=(h,)), jnp.float32)
        B = jnp.asarray(rng.normal(size=(1, t, 1, n)), jnp.float32)
        C = jnp.asarray(rng.normal(size=(1, t, 1, n)), jnp.float32)
        a = dt * A
        xs = x * dt[..., None]
        q = jnp.broadcast_to(C, (1, t, h, n))
        k = jnp.broadcast_to(B, (1, t, h, n))
        tc, mc = _bench(lambda *v: ssd_chunked(*v, chunk_size=args.chunk)[0], (xs, a, B, C), args.repeats)
        ts, ms = _bench(lambda *v: ssd_scan(*v)[0], (xs, a, B, C), args.repeats)
        grad = lambda fn: jax.grad(lambda *v: jnp.sum(fn(*v)[0]), argnums=(0, 1, 2, 3))  # noqa: E731
        tgc, _ = _bench(grad(lambda *v: ssd_chunked(*v, chunk_size=args.chunk)), (xs, a, B, C), args.repeats)
        tgs, _ = _bench(grad(ssd_scan), (xs, a, B, C), args.repeats)
        tgh, _ = _bench(grad(lambda *v: ssd_hybrid(*v, args.chunk)), (xs, a, B, C), args.repeats)
        ta, ma = _bench(causal_attention, (q, k, x), args.repeats)
        tt = None if args.no_torch else _bench_torch(x, dt, A, B, C, args.chunk, args.repeats)
        row = dict(T=t, chunked_s=tc, scan_s=ts, chunked_grad_s=tgc, scan_grad_s=tgs, hybrid_grad_s=tgh, attn_s=ta,
                   torch_s=tt,
                   chunked_mib=mc / 2**20,
                   scan_mib=ms / 2**20, attn_mib=ma / 2**20)
        rows.append(row)
        fmt = lambda v: "-" if v is None else f"{v:.4f}"
        print(f"{t:>6} | {tc:>9.4f} | {ts:>8.4f} | {ta:>8.4f} | {fmt(tt):>8} | {row['chunked_mib']:>11.1f} | "
              f"{row['scan_mib']:>8.1f} | {row['attn_mib']:>9.1f} | {ts / tc:>12.2f} | {ta / tc:>12.2f} | "
              f"{'-' if tt is None else f'{tt / tc:.2f}':>13} | fwd+bwd chunked {tgc:.4f} s, scan {tgs:.4f} s, "
              f"hybrid (CPU default) {tgh:.4f} s")
    dec = decode_memory(lengths)
    print("\ndecode state per sequence (Mamba-2 130M SSMCache vs a 24x768 Transformer KV cache, float32):")
    for t, ssm, kv in dec:
        print(f"  T={t:>6}: SSM state {ssm / 2**20:.2f} MiB (constant) | KV cache {kv / 2**20:.1f} MiB")
    if not args.no_write:
        write_rows(rows, dec, args)


def write_rows(rows, dec, args):
    import jaxlib

    from benchmarks.record import load_average, record, utc_now

    intro = (f"CPU, float32, batch 1, heads {args.heads}, head_dim {args.head_dim}, "
             f"state {args.state}, chunk {args.chunk}. Time = median s after compile; MiB = XLA temp+output "
             "buffers of the compiled program (torch: time only). Ratios > 1 mean the chunked SSD is faster.")
    try:
        import torch
        tv = torch.__version__
    except Exception:  # noqa: BLE001
        tv = "n/a"
    stamp = utc_now()
    dev = jax.devices()[0]
    machine = (f"{dev.platform}:{dev.device_kind}; host {platform.machine()} {os.cpu_count()} cpus "
               f"({platform.processor() or platform.system()})")
    load = load_average()
    lines = [f"### {stamp} — {machine}, load {load:.1f} (shared machine); jax {jax.__version__} / jaxlib "
             f"{jaxlib.__version__}, torch {tv}\n",
             "| T | chunked s | scan s | attn s | torch chunk_scan s | chunked MiB | scan MiB | attn MiB | "
             "scan/chunked | attn/chunked | torch/chunked | fwd+bwd chunked s | fwd+bwd scan s | "
             "fwd+bwd hybrid s (CPU default) | fwd+bwd scan/chunked |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tt = r["torch_s"]
        tratio = "-" if tt is None else f"{tt / r['chunked_s']:.2f}"
        lines.append(f"| {r['T']} | {r['chunked_s']:.4f} | {r['scan_s']:.4f} | {r['attn_s']:.4f} | "
                     f"{'-' if tt is None else f'{tt:.4f}'} | {r['chunked_mib']:.1f} | {r['scan_mib']:.1f} | "
                     f"{r['attn_mib']:.1f} | {r['scan_s'] / r['chunked_s']:.2f} | {r['attn_s'] / r['chunked_s']:.2f} | "
                     f"{tratio} | {r['chunked_grad_s']:.4f} | {r['scan_grad_s']:.4f} | {r['hybrid_grad_s']:.4f} | "
                     f"{r['scan_grad_s'] / r['chunked_grad_s']:.2f} |")
    lines.append("\nDecode state per sequence (float32): " + "; ".join(
        f"T={t}: SSM {s / 2**20:.2f} MiB vs KV {k / 2**20:.1f} MiB" for t, s, k in dec)
        + " (Mamba-2 130M SSMCache, constant in T, vs a 24-layer 768-wide Transformer KV cache).\n")
    record("SSD: chunked vs sequential scan vs causal attention (benchmarks/ssd.py)", intro, "\n".join(lines))


if __name__ == "__main__":
    main()
