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
DUMP = None
if "--buffers" in sys.argv:  # XLA's buffer assignment of the decode steps, dumped before the backend starts
    import tempfile

    DUMP = tempfile.mkdtemp(prefix="decode_bytes_")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP} --xla_dump_hlo_as_text"
                               " --xla_dump_hlo_module_re=.*_decode.*").strip()
sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: an older checkout can be measured

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402


def compile_step(preset_name: str, layers: int, batch: int, capacity: int, loop: str | None = None):
    """The generation decode step compiled for a random-weight model: (compiled, step fn, its arguments, cache).
    loop: the layer loop ("scan", "unrolled"; None = what `DecodeBatch` picks here)."""
    dec, args, cache = build_step(preset_name, layers, batch, capacity, loop)
    return compile_args(dec, args), dec, args, cache


def compile_args(dec, args):
    from jaxlm.infer.sampling import SamplingFlags

    return dec.lower(*args, flags=SamplingFlags()).compile()


def build_step(preset_name: str, layers: int, batch: int, capacity: int, loop: str | None = None):
    """(the jitted decode step, its arguments, the cache) for a random-weight model."""
    from jaxlm.config import preset
    from jaxlm.infer import cache as cache_lib
    from jaxlm.infer import layers as layers_lib
    from jaxlm.infer.generate import compiled_steps
    from jaxlm.infer.sampling import SamplingParams, pack_params
    from jaxlm.models.decoder import DecoderLM

    cfg = preset(preset_name, num_layers=layers)
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    gd, st = nnx.split(model)
    loop = layers_lib.layer_loop(model, None, loop)
    _, dec = compiled_steps(gd, None, loop)
    if loop == "unrolled":
        cache = layers_lib.LayerListCache.zeros(cfg, batch, capacity)
        weights = (st, layers_lib.split_layers(gd, st))
    else:
        cache, weights = cache_lib.init_cache(model, batch, capacity), (st,)
    cache = cache_lib.with_lengths(cache, jnp.full((batch,), capacity // 2))
    params = {k: jnp.asarray(v) for k, v in pack_params([SamplingParams()] * batch).items()}
    args = (*weights, cache, jnp.zeros((batch, cfg.vocab_size), bool), jnp.zeros((batch, 2), jnp.uint32), params,
            jnp.zeros((batch,), jnp.int32))
    return dec, args, cache


def bytes_accessed(compiled) -> float:
    ca = compiled.cost_analysis()
    return float((ca[0] if isinstance(ca, list) else ca)["bytes accessed"])


def hlo_facts(hlo: str, cache_shape) -> tuple[bool, list[str]]:
    """(are the donated cache parameters (cache.k / cache.v, or cache.k[i] / cache.v[i] per layer) all aliased to
    outputs, the ops that copy a whole cache buffer of shape `cache_shape`)."""
    alias = hlo.splitlines()[0]  # HloModule ..., input_output_alias={ {0}: (11, {}, may-alias), ... }
    params = re.findall(r"parameter\((\d+)\), metadata=\{op_name=\"cache\.[kv](?:\[\d+\])?\"", hlo)
    aliased = bool(params) and all(re.search(r": \(%s, \{\}, \w+-alias\)" % i, alias) for i in params)
    full = re.escape("f32[%s]" % ",".join(map(str, cache_shape)))
    return aliased, [ln.strip() for ln in hlo.splitlines() if re.search(rf"= {full}\S* copy\(", ln)]


def materialised(hlo: str, shapes) -> list[str]:
    """Ops that write a fresh copy of a buffer of one of `shapes` (a layer's weight matrix, a layer's cache): a
    copy, a slice, or a fusion named after one (XLA CPU's dynamic-slice fusions that copy a layer out of a stack
    before its dot; not the in-place dynamic-update-slice of the new slot). Empty when every weight and cache byte
    is read where it lies."""
    want = {",".join(map(str, s)) for s in shapes}
    out = []
    for ln in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.-]+) = f32\[([\d,]*)\]\S* ([\w-]+)\(", ln)
        if m and m.group(2) in want and (m.group(3) in ("copy", "slice", "dynamic-slice") or (
                m.group(3) == "fusion" and re.search(r"(?<!update-)slice|copy|transpose", m.group(1)))):
            out.append(f"{m.group(1)} f32[{m.group(2)}]")
    return out


def in_place_writes(dump_dir: str, module: str) -> tuple[int, int]:
    """From XLA's buffer assignment of the last dumped `module` ("_decode" or "_decode_unrolled"): (cache parameters
    whose allocation also holds the scatter / dynamic-update-slice that writes the new slot, cache parameters). Equal
    numbers: every new slot is written into the donated buffer itself, nothing else of the cache is written."""
    files = sorted(Path(dump_dir).glob(f"*jit_{module}.cpu_after_optimizations-buffer-assignment.txt"))
    if not files:
        return 0, 0
    blocks = re.split(r"\nallocation \d+:", files[-1].read_text())
    cache = [b for b in blocks if re.search(r"value: <\d+ cache_[kv]", b)]
    return sum(bool(re.search(r"value: <\d+ \S*(scatter|dynamic-update-slice)", b)) for b in cache), len(cache)


def layer_shapes(args, cache) -> set:
    """Shapes of one layer's weight matrices and of one layer's cache (with and without a leading axis of 1)."""
    st = args[0]
    lstate = st["layers"] if "layers" in st else st
    per_layer = {tuple(x.shape[1:]) for x in jax.tree.leaves(lstate) if x.ndim >= 3}
    one = tuple(jax.tree.leaves(cache.k)[0].shape[-4:])
    return per_layer | {one, (1,) + one}


def measure(preset_name: str, layers: int, batch: int, capacity: int, loop: str | None = None, steps: int = 20):
    from jaxlm.infer import cache as cache_lib
    from jaxlm.infer.sampling import SamplingFlags

    dec, args, cache = build_step(preset_name, layers, batch, capacity, loop)
    t0 = time.perf_counter()
    compiled = compile_args(dec, args)  # lowering + XLA compile of the step alone
    compile_s = time.perf_counter() - t0
    hlo = compiled.as_text()
    shape = jax.tree.leaves(cache.k)[0].shape
    aliased, copies = hlo_facts(hlo, shape)
    copied = materialised(hlo, layer_shapes(args, cache))
    weights, (cache, seen, keys, params, tok) = args[:-5], args[-5:]
    flags = SamplingFlags()
    cache, seen, tok = dec(*weights, cache, seen, keys, params, tok, flags=flags)  # warm
    jax.block_until_ready(tok)
    t0 = time.perf_counter()
    for _ in range(steps):
        cache, seen, tok = dec(*weights, cache, seen, keys, params, tok, flags=flags)
        cache = cache_lib.with_lengths(cache, jnp.full((batch,), capacity // 2))
    jax.block_until_ready(tok)
    step_ms = (time.perf_counter() - t0) / steps * 1e3
    inplace = in_place_writes(DUMP, "_decode_unrolled" if len(weights) > 1 else "_decode") if DUMP else None
    return dict(inplace=inplace, bytes=bytes_accessed(compiled), cache=sum(x.nbytes for x in jax.tree.leaves((cache.k, cache.v))),
                weights=sum(x.nbytes for x in jax.tree.leaves(args[0])), copies=len(copies), copied=len(copied),
                aliased=aliased, step_ms=step_ms, compile_s=compile_s, loop="unrolled" if len(weights) > 1 else "scan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--capacities", default="256,1024")
    ap.add_argument("--loops", default="scan,unrolled", help="layer loops to measure (jaxlm/infer/layers.py)")
    ap.add_argument("--buffers", action="store_true", help="also read XLA's buffer assignment (dumped to a temp dir)")
    ap.add_argument("--label", default="this tree")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    c1, c2 = (int(v) for v in args.capacities.split(","))
    lines = []
    for loop in args.loops.split(","):
        r1 = measure(args.preset, args.layers, args.batch, c1, loop)
        r2 = measure(args.preset, args.layers, args.batch, c2, loop)
        passes = (r2["bytes"] - r1["bytes"]) / (r2["cache"] - r1["cache"])
        # the rest of the bytes (intercept): weights and activations; only meaningful without a loop (the cost
        # model counts a while loop's body once)
        wpasses = (r1["bytes"] - passes * r1["cache"]) / r1["weights"] if r1["loop"] == "unrolled" else float("nan")
        print(f"{args.preset} x{args.layers} layers, batch {args.batch}, {r1['loop']}: weights "
              f"{r1['weights'] / 2**20:.1f} MiB; cache {r1['cache'] / 2**20:.1f} / {r2['cache'] / 2**20:.1f} MiB at "
              f"{c1} / {c2} slots")
        print(f"  cost-model cache passes per step {passes:.2f}, weight passes {wpasses:.3f}; full-cache copies "
              f"{r1['copies']}/{r2['copies']}; layer weights/cache copied out {r1['copied']}/{r2['copied']}; "
              f"cache aliased {r1['aliased'] and r2['aliased']}; step {r1['step_ms']:.1f} / {r2['step_ms']:.1f} ms; "
              f"compile {r1['compile_s']:.1f} / {r2['compile_s']:.1f} s")
        if r1["inplace"]:
            print(f"  buffer assignment: {r1['inplace'][0]} of {r1['inplace'][1]} cache buffers share their allocation "
                  f"with the write of the new slot (in place)")
        lines.append((r1, r2, passes, wpasses))
    if args.no_record:
        return
    from benchmarks.record import load_average, record, utc_now

    load = load_average()
    intro = ("One jitted decode step (jaxlm.infer.generate), float32, random weights. Cache passes = slope of XLA's "
             "cost-model bytes accessed over two capacities; weight passes = the rest of the bytes over the weight "
             "bytes (unrolled layers only: the cost model counts a loop body once). Copied out = ops that copy a "
             "layer's weight matrix or cache before reading it. Step and compile time under the load noted "
             "(shared machine).\n\n"
             "| date (UTC) | machine | code | model | layer loop | batch | capacities | cache passes | weight passes | "
             "full-cache copies | layer copies | cache aliased | step ms | compile s |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    now = utc_now("%Y-%m-%d %H:%M")
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU, load {load:.1f}, jax {jax.__version__}"
    rows = "".join(
        f"| {now} | {machine} | {args.label} | {args.preset} x{args.layers} layers | {r1['loop']} | {args.batch} | "
        f"{c1}, {c2} | {p:.2f} | {w:.3f} | {r1['copies']}, {r2['copies']} | {r1['copied']}, {r2['copied']} | "
        f"{r1['aliased'] and r2['aliased']} | {r1['step_ms']:.1f}, {r2['step_ms']:.1f} | "
        f"{r1['compile_s']:.1f}, {r2['compile_s']:.1f} |\n" for r1, r2, p, w in lines)
    record("Decode bytes per layer loop: what one decode step touches (benchmarks/decode_bytes.py)", intro, rows)


if __name__ == "__main__":
    main()
