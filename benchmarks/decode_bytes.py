"""What one decode step touches, read from the compiled program: XLA's cost-model bytes accessed of
`jaxlm.infer.generate`'s jitted decode step (the one the server and `Generator` run), and its wall time.

The cost model counts a while loop's body once, so the layers are measured through the slope over two cache
capacities: cache passes = d(bytes accessed) / d(cache bytes). Also reported: whether any op copies the stacked
cache (a `copy` of its full shape) and whether the donated cache is aliased to the output. XLA's cost model charges
an in-place scatter (the new slot of every row) as a full read + write of its operand, so 1 pass of real reading
shows as about 3.

    python -m benchmarks.decode_bytes [--preset smollm2-135m] [--layers 4] [--batch 8] [--capacities 256,1024]
    PYTHONPATH=<an older checkout> python benchmarks/decode_bytes.py --no-record   # the same numbers before

Random weights (no download); float32.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: an older checkout can be measured

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402


def compile_step(preset_name: str, layers: int, batch: int, capacity: int):
    """The generation decode step compiled for a random-weight model: (compiled, step fn, its arguments, cache)."""
    from jaxlm.config import preset
    from jaxlm.infer import cache as cache_lib
    from jaxlm.infer.generate import compiled_steps
    from jaxlm.infer.sampling import SamplingFlags, SamplingParams, pack_params
    from jaxlm.models.decoder import DecoderLM

    cfg = preset(preset_name, num_layers=layers)
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    gd, st = nnx.split(model)
    _, dec = compiled_steps(gd)
    cache = cache_lib.with_lengths(cache_lib.init_cache(model, batch, capacity), jnp.full((batch,), capacity // 2))
    params = {k: jnp.asarray(v) for k, v in pack_params([SamplingParams()] * batch).items()}
    args = (st, cache, jnp.zeros((batch, cfg.vocab_size), bool), jnp.zeros((batch, 2), jnp.uint32), params,
            jnp.zeros((batch,), jnp.int32))
    return dec.lower(*args, flags=SamplingFlags()).compile(), dec, args, cache


def bytes_accessed(compiled) -> float:
    ca = compiled.cost_analysis()
    return float((ca[0] if isinstance(ca, list) else ca)["bytes accessed"])


def hlo_facts(hlo: str, cache_shape) -> tuple[bool, list[str]]:
    """(are the donated cache.k / cache.v parameters aliased to outputs, the ops that copy the full stacked cache)."""
    alias = hlo.splitlines()[0]  # HloModule ..., input_output_alias={ {0}: (11, {}, may-alias), ... }
    aliased = True
    for name in ("cache.k", "cache.v"):
        m = re.search(r"parameter\((\d+)\), metadata=\{op_name=\"%s\"" % re.escape(name), hlo)
        aliased &= bool(m and re.search(r": \(%s, \{\}, \w+-alias\)" % m.group(1), alias))
    full = re.escape("f32[%s]" % ",".join(map(str, cache_shape)))
    return aliased, [ln.strip() for ln in hlo.splitlines() if re.search(rf"= {full}\S* copy\(", ln)]


def measure(preset_name: str, layers: int, batch: int, capacity: int, steps: int = 20):
    from jaxlm.infer import cache as cache_lib
    from jaxlm.infer.sampling import SamplingFlags

    compiled, dec, args, cache = compile_step(preset_name, layers, batch, capacity)
    aliased, copies = hlo_facts(compiled.as_text(), cache.k.shape)
    st, cache, seen, keys, params, tok = args
    flags = SamplingFlags()
    cache, seen, tok = dec(st, cache, seen, keys, params, tok, flags=flags)  # warm
    jax.block_until_ready(tok)
    t0 = time.perf_counter()
    for _ in range(steps):
        cache, seen, tok = dec(st, cache, seen, keys, params, tok, flags=flags)
        cache = cache_lib.with_lengths(cache, jnp.full((batch,), capacity // 2))
    jax.block_until_ready(tok)
    step_ms = (time.perf_counter() - t0) / steps * 1e3
    weights = sum(x.nbytes for x in jax.tree.leaves(st))
    return dict(bytes=bytes_accessed(compiled), cache=2 * cache.k.nbytes, weights=weights, copies=len(copies),
                aliased=aliased, step_ms=step_ms)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--capacities", default="256,1024")
    ap.add_argument("--label", default="this tree")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    c1, c2 = (int(v) for v in args.capacities.split(","))
    r1 = measure(args.preset, args.layers, args.batch, c1)
    r2 = measure(args.preset, args.layers, args.batch, c2)
    passes = (r2["bytes"] - r1["bytes"]) / (r2["cache"] - r1["cache"])
    print(f"{args.preset} x{args.layers} layers, batch {args.batch}: weights {r1['weights'] / 2**20:.1f} MiB; "
          f"cache {r1['cache'] / 2**20:.1f} / {r2['cache'] / 2**20:.1f} MiB at {c1} / {c2} slots")
    print(f"  cost-model cache passes per step {passes:.2f}; full-cache copies {r1['copies']}/{r2['copies']}; "
          f"cache aliased {r1['aliased']}; step {r1['step_ms']:.1f} / {r2['step_ms']:.1f} ms")
    if args.no_record:
        return
    from benchmarks.record import record, utc_now

    load = os.getloadavg()[0]
    intro = ("One jitted decode step (jaxlm.infer.generate), float32, random weights. Cache passes = slope of XLA's "
             "cost-model bytes accessed over two capacities (the in-place scatter of the new slot is charged as a "
             "full read + write, so ~3 = one real read). Step time under the load noted (shared machine).\n\n"
             "| date (UTC) | machine | code | model | batch | capacities | cache passes | full-cache copies | "
             "cache aliased | step ms |\n|---|---|---|---|---|---|---|---|---|---|")
    line = (f"| {utc_now('%Y-%m-%d %H:%M')} | {os.cpu_count()}-core {platform.machine()} CPU, load {load:.1f}, "
            f"jax {jax.__version__} | {args.label} | {args.preset} x{args.layers} layers | {args.batch} | {c1}, {c2} | "
            f"{passes:.2f} | {r1['copies']}, {r2['copies']} | {r1['aliased']} | "
            f"{r1['step_ms']:.1f}, {r2['step_ms']:.1f} |\n")
    record("Decode bytes: what one decode step touches (benchmarks/decode_bytes.py)", intro, line)


if __name__ == "__main__":
    main()
