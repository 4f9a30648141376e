"""One GPU suite (one H100/H200, < 8 minutes): kernel correctness on the device, then the speed numbers.

    python benchmarks/gpu_suite.py                    # on the GPU machine; appends to BENCHMARKS.md
    python benchmarks/gpu_suite.py --interpret        # CPU smoke run of the whole script at tiny sizes (< 2 min)
    python benchmarks/gpu_suite.py --only check,attention --no-record

Sections (each guarded: a failure is reported and the suite goes on; the exit code is 1 if a check failed):
1. check: every Pallas kernel against its reference on the device: FLUTE (4/3/2 bits), flash attention forward and
   gradients (causal + packed segments + GQA, f32 and bf16), cuDNN attention, and when present the decode-attention
   kernel (kernels/decode) and the Pallas SSD forward and backward (y, final state and the gradients of all inputs).
2. train: training MFU of a ~1B Llama at seq 2048 vs the measured bf16 peak (benchmarks/train_gpu.py, run first in
   a subprocess so it has the whole GPU; it records its own row).
3. flute: FLUTE vs bf16 jnp.dot (f32 accumulation) vs XLA dequantize-then-dot vs cuBLAS (jax.lax.dot in bf16) at
   M in {1, 16, 64}, N = K = 8192, 4 and 3 bits, G = 128 (weights rotated over 8 sets; benchmarks/flute_kernel.py).
4. attention: flash (Pallas) vs cuDNN vs plain XLA, causal bf16, forward and forward+backward, at 2k/8k/32k tokens.
5. decode: batch-1 and batch-16 decode of the ~1B mobillama-1b preset vs the HBM roofline (benchmarks/generate_gpu.py).
6. ssd: the Pallas SSD kernels (both forward variants) vs XLA's chunked SSD vs flash attention at 16k, forward and
   forward+backward.
Rows go to one BENCHMARKS.md section with the device and versions.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SECTIONS = ("check", "train", "flute", "attention", "decode", "ssd")


class Suite:
    def __init__(self, interpret: bool):
        self.interpret = interpret
        self.checks = []  # (name, err, tol)
        self.tables = {}  # section -> (header, [rows])
        self.notes = []

    def check(self, name, err, tol):
        ok = bool(err <= tol)
        self.checks.append((name, err, tol, ok))
        print(f"  {'OK  ' if ok else 'FAIL'} {name}: max rel err {err:.2e} (tol {tol:.0e})", flush=True)

    def row(self, section, header, cells):
        self.tables.setdefault(section, (header, []))[1].append(cells)
        print("  " + " | ".join(str(c) for c in cells), flush=True)


def _rel(a, b):
    import jax.numpy as jnp

    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _time(fn, args, reps):
    from benchmarks.flute_kernel import _timeit

    return _timeit(fn, args, reps)


# ------------------------------------------------------------------------------------------------ 1. correctness
def check_flute(s: Suite):
    import jax.numpy as jnp

    from benchmarks.flute_kernel import _operands
    from kernels.flute import pallas, reference

    rng = __import__("numpy").random.default_rng(0)
    k, n = (256, 32) if s.interpret else (1024, 256)
    for bits in (4, 3, 2):
        for g, dt in ((64, jnp.float32), (128, jnp.bfloat16)):
            qs, t = _operands(rng, bits, g, k, n, 1, dt)
            p, sc = qs[0]
            x = jnp.asarray(rng.standard_normal((16, k)), dt)
            y = pallas.flute_matmul(x, p, sc, t, bits=bits, group_size=g, interpret=s.interpret)
            r = reference.flute_matmul(x.astype(jnp.float32), p, sc.astype(jnp.float32), t, bits=bits, group_size=g)
            s.check(f"flute W{bits}G{g} {jnp.dtype(dt).name} M=16 K={k} N={n}", _rel(y, r),
                    1e-4 if dt == jnp.float32 else 2e-2)


def _attn_operands(B, T, H, KV, D, dtype, seed=0):
    import jax
    import jax.numpy as jnp

    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (B, T, H, D), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (B, T, KV, D), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (B, T, KV, D), jnp.float32).astype(dtype)
    w = jax.random.normal(ks[3], (B, T, H, D), jnp.float32)
    return q, k, v, w


def check_attention(s: Suite):
    import jax
    import jax.numpy as jnp

    import kernels.attention as ka

    T = 64 if s.interpret else 512
    impl = "interpret" if s.interpret else "pallas"
    seg = jnp.broadcast_to((jnp.arange(T) >= T // 3).astype(jnp.int32), (2, T))
    for D, dt in ((64, jnp.float32), (128, jnp.bfloat16)):
        q, k, v, w = _attn_operands(2, T, 8, 2, D, dt)

        def loss(impl, q, k, v):
            o = ka.attention(q, k, v, None, None, seg, seg, causal=True, impl=impl, block_q=32 if s.interpret else 64,
                             block_k=32 if s.interpret else 64)
            return jnp.sum(o.astype(jnp.float32) * w), o

        up = lambda x: x.astype(jnp.float32)
        f = jax.jit(jax.value_and_grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2), has_aux=True))
        r = jax.jit(jax.value_and_grad(lambda *a: loss("reference", *a), argnums=(0, 1, 2), has_aux=True))
        (_, o), g = f(q, k, v)
        (_, o_r), g_r = r(up(q), up(k), up(v))
        tol = 1e-4 if dt == jnp.float32 else 3e-2
        name = f"flash attention {impl} causal+segments GQA 8/2 T={T} D={D} {jnp.dtype(dt).name}"
        s.check(name + " forward", _rel(o, o_r), tol)
        for nm, a, b in zip("qkv", g, g_r):
            s.check(name + f" d{nm}", _rel(a, b), tol * 2)
    if not s.interpret:
        q, k, v, _ = _attn_operands(2, T, 8, 2, 128, jnp.bfloat16)
        o = jax.jit(lambda q, k, v: ka.attention(q, k, v, causal=True, impl="cudnn", same_positions=True))(q, k, v)
        o_r = ka.attention(*(x.astype(jnp.float32) for x in (q, k, v)), causal=True, impl="reference")
        s.check(f"cuDNN attention causal GQA 8/2 T={T} D=128 bf16", _rel(o, o_r), 3e-2)


def check_decode(s: Suite):
    import jax
    import jax.numpy as jnp

    try:
        from jaxlm.nn.decode import decode_attend_xla
        from kernels.decode import decode_attention
    except ImportError as e:
        s.notes.append(f"decode kernel not present ({e}); skipped")
        print(f"  skipped: {e}")
        return
    L, B, S, KV, H, D = 2, 4, (64 if s.interpret else 1024), 2, 8, 128
    ks = jax.random.split(jax.random.key(3), 3)
    k = jax.random.normal(ks[0], (L, B, S, KV, D), jnp.float32).astype(jnp.bfloat16)
    v = jax.random.normal(ks[1], (L, B, S, KV, D), jnp.float32).astype(jnp.bfloat16)
    q = jax.random.normal(ks[2], (B, H, D), jnp.float32).astype(jnp.bfloat16)
    lengths = jnp.array([1, S // 3, S - 1, S], jnp.int32)
    o = decode_attention(q, k, v, 1, lengths, interpret=s.interpret)
    r = decode_attend_xla(q[:, None].astype(jnp.float32), k, v, 1, lengths, D ** -0.5)[:, 0]
    s.check(f"decode attention ragged lengths L={L} B={B} S={S} H/KV={H}/{KV} D={D} bf16", _rel(o, r), 3e-2)


def _ssd_operands(T, H=4, P=16, N=16, G=1, dtype=None, seed=0):
    """x [1,T,H,P], a [1,T,H] (log-decays <= 0), B/C [1,T,G,N] (x/B/C in dtype), initial state, output weights."""
    import jax
    import jax.numpy as jnp

    dtype = dtype or jnp.float32
    ks = jax.random.split(jax.random.key(seed), 7)
    x = jax.random.normal(ks[0], (1, T, H, P), jnp.float32).astype(dtype)
    a = -jnp.exp(jax.random.normal(ks[1], (1, T, H), jnp.float32)) * 0.1
    Bm = jax.random.normal(ks[2], (1, T, G, N), jnp.float32).astype(dtype)
    Cm = jax.random.normal(ks[3], (1, T, G, N), jnp.float32).astype(dtype)
    s0 = jax.random.normal(ks[4], (1, H, P, N), jnp.float32)
    wy = jax.random.normal(ks[5], (1, T, H, P), jnp.float32)
    wf = jax.random.normal(ks[6], (1, H, P, N), jnp.float32)
    return x, a, Bm, Cm, s0, wy, wf


def _ssd_fn(impl, chunk, forward="sequential"):
    """(x, a, B, C, s0) -> (y, final state) through kernels.ssd's dispatcher, or the Pallas kernels with the given
    forward variant when impl is "pallas"/"interpret"."""
    import kernels.ssd as kss

    if impl in ("pallas", "interpret"):
        return lambda x, a, B, C, s0: kss.ssd_pallas(x, a, B, C, chunk, s0, interpret=impl == "interpret",
                                                     forward=forward)
    return lambda x, a, B, C, s0: kss.ssd(x, a, B, C, chunk, s0, impl=impl)


def _ssd_loss_grad(fn):
    """jit(value_and_grad) of sum(y * wy) + sum(final * wf) in all five inputs (x, a, B, C, initial state)."""
    import jax
    import jax.numpy as jnp

    def loss(x, a, B, C, s0, wy, wf):
        y, fin = fn(x, a, B, C, s0)
        return jnp.sum(y * wy) + jnp.sum(fin * wf), (y, fin)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))


def check_ssd(s: Suite):
    """The Pallas SSD forward (y, final state; sequential and parallel variants) and backward kernels (gradients of
    x, a, B, C and the initial state) against the sequential scan (float32, highest matmul precision), 4 heads
    over 2 groups, T not a multiple of the chunk; float32 inputs (IEEE dots in the kernels) and bfloat16 ones (TF32
    dots)."""
    import jax
    import jax.numpy as jnp

    impl = "interpret" if s.interpret else "pallas"
    T = 100 if s.interpret else 1000
    chunk = 32 if s.interpret else 64
    for dt, tol, forward in ((jnp.float32, 1e-4, "sequential"), (jnp.bfloat16, 2e-2, "sequential"),
                             (jnp.float32, 1e-4, "parallel")):
        ops = _ssd_operands(T, H=4, P=16 if s.interpret else 64, N=16 if s.interpret else 64, G=2, dtype=dt)
        (_, (y, fin)), g = _ssd_loss_grad(_ssd_fn(impl, chunk, forward))(*ops)
        up = [v.astype(jnp.float32) for v in ops]
        with jax.default_matmul_precision("highest"):
            (_, (y_r, fin_r)), g_r = _ssd_loss_grad(_ssd_fn("scan", chunk))(*up)
        name = (f"ssd {impl} ({forward} forward) T={T} H/G=4/2 P={ops[0].shape[-1]} N={ops[2].shape[-1]} "
                f"{jnp.dtype(dt).name}")
        s.check(name + " forward y", _rel(y, y_r), tol)
        s.check(name + " final state", _rel(fin, fin_r), tol)
        for nm, a, b in zip(("dx", "da", "dB", "dC", "d initial_state"), g, g_r):
            s.check(f"{name} {nm}", _rel(a, b), tol * 2)


# ---------------------------------------------------------------------------------------------------- 2. train
def run_train(s: Suite, timeout_s: float):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_gpu.py")]
    cmd += ["--tiny", "--no-write"] if s.interpret else ["--steps", "8", "--warmup", "2"]
    if s.no_record and not s.interpret:
        cmd.append("--no-write")
    print("  $ " + " ".join(cmd), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}  # the child owns the GPU
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    out = p.stdout + p.stderr
    print("\n".join("    " + ln for ln in out.strip().splitlines()[-6:]), flush=True)
    if p.returncode:
        raise RuntimeError(f"train_gpu.py exited {p.returncode}")
    m = re.search(r"step ([\d.]+) ms .*?([\d.]+) tokens/s; ([\d.]+) TFLOP/s; MFU ([\d.]+)% of measured peak", out)
    peak = re.search(r"measured bf16 matmul peak: ([\d.]+) TFLOP/s", out)
    if m:
        s.row("train", "| model | ms/step | tokens/s | TFLOP/s | measured peak TFLOP/s | MFU (target >= 50%) |",
              ["~1B Llama seq 2048 (train_gpu.py)" if not s.interpret else "amber-tiny (smoke)", m.group(1),
               m.group(2), m.group(3), peak.group(1) if peak else "?", f"{m.group(4)}%"])


# ---------------------------------------------------------------------------------------------------- 3. flute
def bench_flute(s: Suite, reps: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxlm.quant.formats import QuantFormat
    from jaxlm.quant.pack import pack
    from kernels.flute import pallas, reference

    n = k = 256 if s.interpret else 8192
    sets = 2 if s.interpret else 8
    ms = (1, 16) if s.interpret else (1, 16, 64)
    many = lambda f: jax.jit(lambda x, ws: tuple(f(x, *a) for a in ws))
    keys = jax.random.split(jax.random.key(0), sets)
    ws = [(0.02 * jax.random.normal(kk, (k, n), jnp.float32)).astype(jnp.bfloat16) for kk in keys]
    dot = many(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    cublas = many(lambda x, w: jax.lax.dot(x, w))
    rng = np.random.default_rng(0)
    xs = {m: jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16) for m in ms}
    base = {m: (_time(dot, (xs[m], [(w,) for w in ws]), reps) / sets * 1e6,
                _time(cublas, (xs[m], [(w,) for w in ws]), reps) / sets * 1e6) for m in ms}
    header = ("| N=K | M | bits | G | bf16 jnp.dot us | cuBLAS lax.dot us | XLA deq+dot us | FLUTE Pallas us | "
              "dot/FLUTE | cuBLAS/FLUTE (target >= 3 at M <= 16) | max rel err |")
    for bits in (4, 3):
        fmt = QuantFormat.make(bits, 128)
        qsets = []
        for w in ws:
            codes, sc = fmt.quantize(w.astype(jnp.float32))
            qsets.append((pack(codes, bits, 128), sc.astype(jnp.bfloat16), jnp.asarray(fmt.table_array)))
        ref = many(lambda x, p, sc, t: reference.flute_matmul(x, p, sc, t, bits=bits, group_size=128))
        ker = many(lambda x, p, sc, t: pallas.flute_matmul(x, p, sc, t, bits=bits, group_size=128,
                                                           interpret=s.interpret))
        for m in ms:
            t_ref = _time(ref, (xs[m], qsets), reps) / sets * 1e6
            t_ker = _time(ker, (xs[m], qsets), reps) / sets * 1e6
            p0, s0, t0 = qsets[0]
            exact = reference.flute_matmul(xs[m].astype(jnp.float32), p0, s0.astype(jnp.float32), t0, bits=bits,
                                           group_size=128)
            err = _rel(ker(xs[m], qsets[:1])[0], exact)
            t_dot, t_cub = base[m]
            s.row("flute", header, [n, m, bits, 128, f"{t_dot:.1f}", f"{t_cub:.1f}", f"{t_ref:.1f}", f"{t_ker:.1f}",
                                    f"{t_dot / t_ker:.2f}", f"{t_cub / t_ker:.2f}", f"{err:.1e}"])
        del qsets


# ------------------------------------------------------------------------------------------------ 4. attention
def _attn_fns(impl, causal=True):
    import jax
    import jax.numpy as jnp

    import kernels.attention as ka

    fwd = jax.jit(lambda q, k, v: ka.attention(q, k, v, causal=causal, impl=impl, same_positions=True))

    def loss(q, k, v):
        return jnp.sum(ka.attention(q, k, v, causal=causal, impl=impl, same_positions=True).astype(jnp.float32))

    return fwd, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def bench_attention(s: Suite, reps: int):
    lengths = (128, 256) if s.interpret else (2048, 8192, 32768)
    H, KV, D = (4, 2, 32) if s.interpret else (16, 16, 128)
    import jax.numpy as jnp

    impls = ("interpret", "reference") if s.interpret else ("pallas", "cudnn", "reference")
    header = ("| tokens | impl | heads (q/kv) x dim | forward ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    for T in lengths:
        q, k, v, _ = _attn_operands(1, T, H, KV, D, jnp.bfloat16)
        flops = 4 * T * T * H * D / 2  # causal forward: two matmuls over half the scores
        for impl in impls:
            fwd, bwd = _attn_fns(impl)
            cells = []
            for fn, fl in ((fwd, flops), (bwd, 3.5 * flops)):  # fwd+bwd = 3.5x forward FLOPs (recomputed scores)
                try:
                    t = _time(fn, (q, k, v), reps)
                    cells += [f"{t * 1e3:.2f}", f"{fl / t / 1e12:.1f}"]
                except Exception as e:  # out of memory (the reference at 32k) or a compile failure
                    msg = str(e).splitlines()[0][:80] if str(e) else ""
                    cells += [f"failed: {type(e).__name__}: {msg}", ""]
            s.row("attention", header, [T, impl, f"{H}/{KV} x {D}"] + cells)
            del fwd, bwd


# --------------------------------------------------------------------------------------------------- 5. decode
def bench_decode(s: Suite, steps: int):
    import jax
    import numpy as np
    from flax import nnx

    from benchmarks.generate_gpu import hbm_for
    from jaxlm.config import preset
    from jaxlm.infer.generate import Generator
    from jaxlm.infer.sampling import SamplingParams
    from jaxlm.models.decoder import DecoderLM

    name = "amber-tiny" if s.interpret else "mobillama-1b"
    prompt_len = 8 if s.interpret else 128
    cfg = preset(name, dtype="bfloat16", param_dtype="bfloat16")
    g = Generator(DecoderLM(cfg, rngs=nnx.Rngs(0)))
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(g.state))
    kind = getattr(jax.devices()[0], "device_kind", "cpu")
    bw = hbm_for(kind)
    slot_bytes = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # k + v, bf16, one token, all layers
    header = ("| model | batch | prompt + steps | ms/step | tokens/s | roofline tokens/s (weights + filled KV once) | "
              "% of roofline |")
    for b in (1, 16):
        prompt = np.random.default_rng(b).integers(0, cfg.vocab_size, prompt_len).tolist()
        batch = g.new_batch(b, prompt_len + steps + 8)
        batch.add(list(range(b)), [prompt] * b, [SamplingParams()] * b)
        for _ in range(3):
            batch.step()
        jax.block_until_ready(batch.tok)
        t0 = time.perf_counter()
        for _ in range(steps):
            batch.step()
        jax.block_until_ready(batch.tok)
        dt = (time.perf_counter() - t0) / steps
        filled = prompt_len + 3 + steps / 2  # mean filled slots per row over the timed steps
        roof = b * bw * 1e9 / (param_bytes + b * filled * slot_bytes) if bw else float("nan")
        s.row("decode", header, [f"{name} bf16", b, f"{prompt_len} + {steps}", f"{dt * 1e3:.3f}", f"{b / dt:.0f}",
                                 f"{roof:.0f}", f"{100 * b / dt / roof:.0f}%" if bw else "n/a (no HBM figure)"])


# ------------------------------------------------------------------------------------------------------ 6. ssd
def bench_ssd(s: Suite, reps: int):
    """SSD forward and forward+backward (all five gradients) at 16k tokens: the Pallas kernels (sequential and
    parallel forward, chunk 64 / 128; backward chunk 64) vs XLA's chunked path (chunk 256) vs causal flash
    attention with as many heads."""
    import jax
    import jax.numpy as jnp

    T = 256 if s.interpret else 16384
    H, P, N = (4, 16, 16) if s.interpret else (32, 64, 128)
    kernel = "interpret" if s.interpret else "pallas"
    ops = _ssd_operands(T, H, P, N, G=1, dtype=jnp.bfloat16)
    header = "| tokens | op | shape | forward ms | fwd+bwd ms |"
    shape = f"H={H} P={P} N={N} G=1 bf16"
    small, large = (32, 64) if s.interpret else (64, 128)
    runs = [(kernel, small, "sequential"), (kernel, large, "sequential"), (kernel, small, "parallel"),
            (kernel, large, "parallel"), ("chunked", 256, "")]
    for impl, chunk, forward in runs:
        fn = _ssd_fn(impl, chunk, forward)
        cells = []
        for timed, args in ((jax.jit(fn), ops[:5]), (_ssd_loss_grad(fn), ops)):
            try:
                cells.append(f"{_time(timed, args, reps) * 1e3:.2f}")
            except Exception as e:  # out of memory or a compile failure: report the cell, go on
                cells.append(f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}")
        label = f"ssd {impl} chunk {chunk}" + (f" ({forward} forward)" if forward else "")
        s.row("ssd", header, [T, label, shape] + cells)
    q, k, v, _ = _attn_operands(1, T, H, H, P, jnp.bfloat16)
    fwd, bwd = _attn_fns("interpret" if s.interpret else "pallas")
    s.row("ssd", header, [T, "flash attention (causal)", f"H={H} D={P} bf16",
                          f"{_time(fwd, (q, k, v), reps) * 1e3:.2f}", f"{_time(bwd, (q, k, v), reps) * 1e3:.2f}"])


# ------------------------------------------------------------------------------------------------------ driver
def record_all(s: Suite, t_total: float):
    import jax
    import jaxlib

    from benchmarks.record import record, utc_now

    try:
        import triton  # noqa: F401

        tv = f", triton {triton.__version__}"
    except Exception:
        tv = ""
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", str(dev))
    parts = [f"### {utc_now()} — {kind} ({platform.node()}); python {platform.python_version()}, jax "
             f"{jax.__version__} / jaxlib {jaxlib.__version__}{tv}; suite {t_total:.0f} s"
             + ("; --interpret smoke run (tiny sizes, not speed)" if s.interpret else "")]
    if s.checks:
        parts.append("| check | max rel err | tol | ok |\n|---|---|---|---|\n" + "\n".join(
            f"| {n} | {e:.1e} | {t:.0e} | {'yes' if ok else 'NO'} |" for n, e, t, ok in s.checks))
    for sec, (header, rows) in s.tables.items():
        sep = "|" + "---|" * (header.count("|") - 1)
        parts.append(f"{sec}:\n\n{header}\n{sep}\n" + "\n".join("| " + " | ".join(str(c) for c in r) + " |"
                                                                for r in rows))
    if s.notes:
        parts.append("notes: " + "; ".join(s.notes))
    record("GPU suite (benchmarks/gpu_suite.py)",
           "One run of the whole suite on one GPU: kernel checks on the device, then FLUTE, attention, training MFU "
           "(its row is in the train_gpu.py section), decode vs the HBM roofline, SSD vs attention.",
           "\n\n".join(parts))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--interpret", action="store_true", help="CPU smoke run: tiny sizes, Pallas interpret mode")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions (0: 20 on GPU, 2 in --interpret)")
    ap.add_argument("--decode-steps", type=int, default=0)
    ap.add_argument("--train-timeout", type=float, default=240.0)
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="start no new section after this many seconds (0: 420 on GPU, none with --interpret); "
                         "what was measured is still recorded")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args(argv)
    only = [x for x in a.only.split(",") if x]
    bad = [x for x in only if x not in SECTIONS]
    if bad:
        ap.error(f"--only: unknown sections {bad}; expected {SECTIONS}")
    s = Suite(a.interpret)
    a.budget_s = a.budget_s or (float("inf") if a.interpret else 420.0)
    s.no_record = a.no_record or a.interpret
    reps = a.reps or (2 if a.interpret else 20)
    t_start = time.perf_counter()
    failed = []

    def section(name, fn, *args):
        if name not in only:
            return
        if time.perf_counter() - t_start > a.budget_s:
            s.notes.append(f"section {name} skipped: the {a.budget_s:.0f} s budget was spent")
            print(f"== {name}: skipped (budget of {a.budget_s:.0f} s spent)", flush=True)
            return
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            fn(s, *args)
        except Exception as e:  # noqa: BLE001 - report and go on
            traceback.print_exc()
            failed.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            s.notes.append(f"section {name} failed: {failed[-1]}")
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)

    # this process allocates GPU memory only as it goes, so the training subprocess (run first) has the GPU
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    if jax.default_backend() != "gpu" and not a.interpret:
        print(f"no GPU (backend {jax.default_backend()}); run with --interpret for the CPU smoke path")
        return 2
    section("train", run_train, a.train_timeout)
    section("check", lambda s: (check_flute(s), check_attention(s), check_decode(s), check_ssd(s)))
    section("flute", bench_flute, reps)
    section("attention", bench_attention, reps)
    section("decode", bench_decode, a.decode_steps or (4 if a.interpret else 128))
    section("ssd", bench_ssd, reps)
    total = time.perf_counter() - t_start
    bad_checks = [c for c in s.checks if not c[3]]
    print(f"\nsuite done in {total:.0f} s; {len(s.checks) - len(bad_checks)}/{len(s.checks)} checks OK"
          + (f"; FAILED sections: {failed}" if failed else ""))
    if not s.no_record:
        record_all(s, total)
    return 1 if bad_checks or failed else 0


if __name__ == "__main__":
    sys.exit(main())
