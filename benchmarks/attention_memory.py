"""Compiled memory of attention forward + backward vs sequence length: the reference (materialises the [T, T]
scores) against the chunked XLA path (kernels/attention/chunked.py: memory linear in T), from XLA's memory analysis
of the compiled program (`jax.jit(f).lower(...).compile().memory_analysis()`; nothing is run, so the numbers do not
depend on the machine's load).

    python benchmarks/attention_memory.py [--lengths 2048,4096,8192,16384] [--heads 8 --kv-heads 2 --head-dim 64]
                                          [--chunk 512] [--no-record]

The step is grad of sum(attention(q, k, v) * w) in q, k, v, causal, bfloat16 activations, batch 1. "temp" is XLA's
temporary-buffer size (activations saved for the backward, scores, workspace); arguments/outputs are the same for
both paths and reported once.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compiled_memory(impl: str, T: int, H: int, KV: int, D: int, chunk: int, dtype="bfloat16"):
    import jax
    import jax.numpy as jnp

    import kernels.attention as ka

    def step(q, k, v, w):
        loss = lambda q, k, v: jnp.sum(ka.attention(q, k, v, causal=True, impl=impl, chunk=chunk)
                                       .astype(jnp.float32) * w)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    S = jax.ShapeDtypeStruct
    args = (S((1, T, H, D), dtype), S((1, T, KV, D), dtype), S((1, T, KV, D), dtype), S((1, T, H, D), jnp.float32))
    m = jax.jit(step).lower(*args).compile().memory_analysis()
    return dict(temp=m.temp_size_in_bytes, args=m.argument_size_in_bytes, out=m.output_size_in_bytes)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="2048,4096,8192,16384")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args(argv)
    import jax

    lengths = [int(x) for x in a.lengths.split(",")]
    rows = []
    for T in lengths:
        ref = compiled_memory("reference", T, a.heads, a.kv_heads, a.head_dim, a.chunk)
        chk = compiled_memory("chunked", T, a.heads, a.kv_heads, a.head_dim, a.chunk)
        rows.append((T, ref, chk))
        print(f"T={T:6d}: temp reference {ref['temp'] / 2**20:10.1f} MiB | chunked {chk['temp'] / 2**20:8.1f} MiB | "
              f"args {chk['args'] / 2**20:.1f} MiB, outputs {chk['out'] / 2**20:.1f} MiB", flush=True)
    t0, r0, c0 = rows[0]
    growth = " / ".join(f"{r['temp'] / r0['temp']:.1f}x vs {c['temp'] / c0['temp']:.1f}x" for _, r, c in rows[1:])
    print(f"growth from T={t0} (reference vs chunked): {growth}")
    if a.no_record:
        return 0
    from benchmarks.record import record, utc_now

    cells = " | ".join(f"{r['temp'] / 2**20:.0f} / {c['temp'] / 2**20:.0f}" for _, r, c in rows)
    head = " | ".join(f"T={T} ref / chunked MiB" for T, _, _ in rows)
    row = (f"| {utc_now()} | {platform.node()} cpu, jax {jax.__version__} | B=1 H={a.heads} KV={a.kv_heads} "
           f"D={a.head_dim} bf16 causal, chunk {a.chunk} | {cells} | {growth} |")
    record("Attention memory: compiled forward+backward temp bytes vs T (benchmarks/attention_memory.py)",
           "XLA memory analysis of the compiled grad step (temporary buffers; nothing is run, so machine load "
           "does not matter). Reference = today's attention (materialises [T, T] scores); chunked = "
           "kernels/attention/chunked.py (online softmax over key blocks, recomputing backward).\n\n"
           f"| date | machine | shape | {head} | growth vs first T (ref vs chunked) |\n|"
           + "---|" * (4 + len(rows)), row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
