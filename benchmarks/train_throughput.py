"""Training throughput on this CPU: jaxlm vs PyTorch (transformers LlamaForCausalLM + torch AdamW), one run.

The same small Llama-architecture model (float32), the same batch, AdamW (0.9, 0.95, wd 0.1) with global-norm
clipping 1.0. Tokens/s are measured over steady-state steps after warm-up (jaxlm's first step compiles).
jaxlm runs its real train step (`jaxlm.train.step.make_train_step`) on a 1-device mesh, so XLA's intra-op
threads use the cores like torch's do. Prints a table and appends a dated row to BENCHMARKS.md.

    python benchmarks/train_throughput.py [--steps 10] [--batch 8] [--seq 256] [--mesh 1x1]

Four worker processes (jaxlm and torch, each at all cores and pinned to one core) run interleaved rounds
(benchmarks/interleave.py); each setting's rate is the median over rounds and the ratio is the faster jaxlm setting
over the faster torch setting. `--baseline DIR` adds jaxlm workers running another source tree (e.g. the last
commit, `git archive HEAD | tar -x -C DIR`) in the same rounds, for an A/B of a change under the same load;
`--threads all|1` keeps one thread setting.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--vocab", type=int, default=4096)
    from jaxlm.cli import add_mesh_argument

    add_mesh_argument(p, "1x1")
    p.add_argument("--threads", choices=("both", "all", "1"), default="both")
    p.add_argument("--baseline", metavar="DIR", help="also time jaxlm from this source tree (A/B in the same rounds)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--worker", choices=("jaxlm", "torch"), help=argparse.SUPPRESS)  # child: one implementation
    return p.parse_args()


def model_cfg(a):
    from jaxlm.config import preset

    return preset("amber-tiny", vocab_size=a.vocab, hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads,
                  num_kv_heads=a.heads, head_dim=a.hidden // a.heads, intermediate_size=a.ffn,
                  max_position_embeddings=max(2048, a.seq), dtype="float32", param_dtype="float32")


def batches(a, n):
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        x = rng.integers(0, a.vocab, (a.batch, a.seq + 1)).astype(np.int32)
        out.append({"inputs": x[:, :-1], "targets": x[:, 1:], "source_id": np.zeros((a.batch,), np.int32)})
    return out


def setup_jaxlm(a, data):
    """Returns (run(i) -> loss, info) for jaxlm's jitted train step; the first call compiles."""
    import jax

    from jaxlm.sharding import make_mesh
    from jaxlm.train.config import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig
    from jaxlm.train.optim import make_optimizer
    from jaxlm.train.state import init_state
    from jaxlm.train.step import make_train_step, to_device_batch

    cfg = RunConfig(model=model_cfg(a), optim=OptimConfig(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0),
                    train=TrainConfig(seq_len=a.seq, global_batch=a.batch),
                    phases=(PhaseConfig("p", 1000, {"x": 1.0}, lr=LRSchedule("constant", 1e-4, 1e-4)),))
    mesh = make_mesh(a.mesh)
    mdef, state, sh, tx = init_state(cfg.model, lambda p: make_optimizer(cfg, p), mesh, 0)
    step = make_train_step(mdef, tx, cfg, 1, mesh, sh)
    dev = [to_device_batch(b, mesh) for b in data]
    box = {"state": state}

    def run(i):
        box["state"], m = step(box["state"], dev[i % len(dev)])
        return float(m["loss"])  # the training loop reads the loss every step too

    t0 = time.perf_counter()
    run(0)
    info = {"compile_s": time.perf_counter() - t0, "devices": mesh.devices.size,
            "params": sum(x.size for x in jax.tree.leaves(state.params))}
    return run, info


def setup_torch(a, data):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hc = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                     num_attention_heads=a.heads, num_key_value_heads=a.heads, max_position_embeddings=max(2048, a.seq),
                     rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(hc).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    tb = [(torch.from_numpy(b["inputs"]).long(), torch.from_numpy(b["targets"]).long()) for b in data]

    def run(i):
        x, y = tb[i % len(tb)]
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach().item()

    run(0)
    return run, {"params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def worker(a):
    """`--worker jaxlm|torch`: build one implementation and serve interleaved rounds (benchmarks/interleave.py)."""
    from benchmarks.interleave import apply_threads, serve

    threads = apply_threads()
    if a.worker == "jaxlm":
        from jaxlm.sharding import prepare_devices

        prepare_devices(a.mesh)  # before jax is imported, as every command does
    else:
        import torch

        if threads:
            torch.set_num_threads(threads)
    data = batches(a, a.warmup + a.steps)
    run, info = (setup_jaxlm if a.worker == "jaxlm" else setup_torch)(a, data)
    if a.worker == "jaxlm":
        import jax

        info["version"] = f"jax {jax.__version__}"
    else:
        import torch
        import transformers

        info["threads"] = torch.get_num_threads()
        info["version"] = f"torch {torch.__version__}, transformers {transformers.__version__}"
    serve(run, info)


def main():
    a = parse()
    if a.worker:
        return worker(a)
    from benchmarks.interleave import Pool, load_average

    base = [sys.executable, __file__, "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch),
            "--seq", str(a.seq), "--hidden", str(a.hidden), "--layers", str(a.layers), "--heads", str(a.heads),
            "--ffn", str(a.ffn), "--vocab", str(a.vocab), "--mesh", a.mesh]
    ncpu = os.cpu_count()
    threads = {"both": (None, 1), "all": (None,), "1": (1,)}[a.threads]
    impls = {"jaxlm": base, "torch": base}
    if a.baseline:
        impls["jaxlm-base"] = [sys.executable, str(Path(a.baseline) / "benchmarks" / "train_throughput.py")] + base[2:]
    specs = {f"{impl} {t or ncpu}t": (argv + ["--worker", impl.split("-")[0]], t) for t in threads
             for impl, argv in impls.items()}
    load0 = load_average()
    per_round = max(1, a.steps // a.rounds)
    with Pool(specs) as pool:
        res = pool.measure(a.rounds, per_round, warmup=max(0, a.warmup - 1))
    load1 = load_average()
    tok = {k: statistics.median(a.batch * a.seq * per_round / s for s in r["round_s"]) for k, r in res.items()}
    j = res[next(k for k in res if k.startswith("jaxlm "))]
    print(f"model: Llama {a.layers}L d{a.hidden} h{a.heads} ffn{a.ffn} vocab{a.vocab} ({j['params'] / 1e6:.2f}M params), "
          f"batch {a.batch}x{a.seq}, float32, AdamW + clip; median of {a.rounds} interleaved rounds of {per_round} "
          f"steps; "
          f"load average {load0:.2f} -> {load1:.2f}")
    print(f"{'impl (threads)':<20}{'tokens/s':>12}{'s/step':>10}{'final loss':>12}")
    for k, r in res.items():
        extra = f"   (compile+first step {r['compile_s']:.1f} s)" if "compile_s" in r else ""
        print(f"{k:<20}{tok[k]:>12.0f}{r['s'] / r['n']:>10.3f}{r['last']:>12.4f}{extra}")
    best = lambda impl: max(v for k, v in tok.items() if k.split()[0] == impl)  # noqa: E731
    ratio = best("jaxlm") / best("torch")
    print(f"best jaxlm / best torch tokens/s: {ratio:.2f}x")
    if a.baseline:
        print(f"best jaxlm-base / best torch: {best('jaxlm-base') / best('torch'):.2f}x; "
              f"jaxlm / jaxlm-base: {best('jaxlm') / best('jaxlm-base'):.2f}x")
    if a.no_write or a.baseline or a.threads != "both":
        return
    from benchmarks.record import load_label, record, utc_now

    fmt = lambda impl: ", ".join(f"{tok[k]:.0f} ({k.split()[1]})" for k in tok if k.split()[0] == impl)  # noqa: E731
    loaded = load_label(load0, load1)
    machine = f"{platform.machine()} {ncpu} cpus ({platform.system()}), load avg {load0:.1f} -> {load1:.1f}{loaded}"
    versions = f"{j['version']}, {res[f'torch {ncpu}t']['version']}"
    intro = ("Same Llama-architecture model and batch, float32, AdamW (0.9, 0.95, wd 0.1) + clip 1.0; "
             "steady-state tokens/s after warm-up; jaxlm = its jitted train step on a 1-device mesh, torch = "
             "transformers LlamaForCausalLM (sdpa) + torch.optim.AdamW. Ratio > 1: jaxlm faster.\n\n"
             "| date | machine | versions | model | batch | jaxlm tok/s | torch tok/s | jaxlm/torch | jaxlm compile s |\n"
             "|---|---|---|---|---|---|---|---|---|")
    row = (f"| {utc_now()} | {machine} | {versions} | {a.layers}L d{a.hidden} ffn{a.ffn} V{a.vocab} "
           f"({j['params'] / 1e6:.1f}M) | {a.batch}x{a.seq} | {fmt('jaxlm')} | {fmt('torch')} | {ratio:.2f} | "
           f"{j['compile_s']:.1f} |\n")
    record("Training throughput on CPU: jaxlm vs PyTorch (benchmarks/train_throughput.py)", intro, row)


if __name__ == "__main__":
    main()
