"""Training throughput on this CPU: jaxlm vs PyTorch (transformers LlamaForCausalLM + torch AdamW), one run.

The same small Llama-architecture model (float32), the same batch, AdamW (0.9, 0.95, wd 0.1) with global-norm
clipping 1.0. Tokens/s are measured over steady-state steps after warm-up (jaxlm's first step compiles).
jaxlm runs its real train step (`jaxlm.train.step.make_train_step`) on a 1-device mesh, so XLA's intra-op
threads use the cores like torch's do. Prints a table and appends a dated row to BENCHMARKS.md.

    python benchmarks/train_throughput.py [--steps 10] [--batch 8] [--seq 256] [--mesh 1x1]
"""

from __future__ import annotations

import argparse
import os
import platform
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
    p.add_argument("--no-write", action="store_true")
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


def measure(runs: dict, a) -> dict:
    """Interleave rounds of steps of each implementation so load changes on a shared machine hit both alike."""
    for r in runs.values():
        for i in range(1, a.warmup):
            r(i)
    total = {k: 0.0 for k in runs}
    loss = {}
    per_round = max(1, a.steps // a.rounds)
    for rnd in range(a.rounds):
        for k, r in runs.items():
            t0 = time.perf_counter()
            for i in range(per_round):
                loss[k] = r(a.warmup + rnd * per_round + i)
            total[k] += time.perf_counter() - t0
    n = per_round * a.rounds
    return {k: {"tok_s": a.batch * a.seq * n / total[k], "step_s": total[k] / n, "loss": loss[k]} for k in runs}


def main():
    a = parse()
    from jaxlm.sharding import prepare_devices

    prepare_devices(a.mesh)  # before jax is imported, as every command does
    import jax
    import torch

    data = batches(a, a.warmup + a.steps)
    jrun, jinfo = setup_jaxlm(a, data)
    trun, tinfo = setup_torch(a, data)
    res = measure({"jaxlm": jrun, "torch": trun}, a)
    j = {**res["jaxlm"], **jinfo}
    t = {**res["torch"], **tinfo}
    ratio = j["tok_s"] / t["tok_s"]
    print(f"model: Llama {a.layers}L d{a.hidden} h{a.heads} ffn{a.ffn} vocab{a.vocab} ({j['params'] / 1e6:.2f}M params, "
          f"torch {t['params'] / 1e6:.2f}M), batch {a.batch}x{a.seq}, float32, AdamW + clip")
    print(f"{'impl':<28}{'tokens/s':>12}{'s/step':>10}{'final loss':>12}")
    print(f"{'jaxlm (mesh ' + a.mesh + ')':<28}{j['tok_s']:>12.0f}{j['step_s']:>10.3f}{j['loss']:>12.4f}"
          f"   (compile+first step {j['compile_s']:.1f} s)")
    print(f"{'torch ' + torch.__version__ + ' AdamW':<28}{t['tok_s']:>12.0f}{t['step_s']:>10.3f}{t['loss']:>12.4f}"
          f"   ({t['threads']} threads)")
    print(f"jaxlm / torch tokens/s: {ratio:.2f}x")
    if a.no_write:
        return
    import transformers

    from benchmarks.record import record, utc_now

    now = utc_now()
    machine = (f"{platform.machine()} {os.cpu_count()} cpus ({platform.system()}), load avg "
               f"{os.getloadavg()[0]:.1f}")
    intro = ("Same Llama-architecture model and batch, float32, AdamW (0.9, 0.95, wd 0.1) + clip 1.0; "
             "steady-state tokens/s after warm-up, measured in interleaved rounds; jaxlm = its jitted train step on a 1-device mesh, torch = "
             "transformers LlamaForCausalLM (sdpa) + torch.optim.AdamW. Ratio > 1: jaxlm faster.\n\n"
             "| date | machine | versions | model | batch | jaxlm tok/s | torch tok/s | jaxlm/torch | jaxlm compile s |\n"
             "|---|---|---|---|---|---|---|---|---|")
    row = (f"| {now} | {machine} | jax {jax.__version__}, torch {torch.__version__}, transformers "
           f"{transformers.__version__} | {a.layers}L d{a.hidden} ffn{a.ffn} V{a.vocab} ({j['params'] / 1e6:.1f}M) | "
           f"{a.batch}x{a.seq} | {j['tok_s']:.0f} | {t['tok_s']:.0f} | {ratio:.2f} | {j['compile_s']:.1f} |\n")
    record("Training throughput on CPU: jaxlm vs PyTorch (benchmarks/train_throughput.py)", intro, row)


if __name__ == "__main__":
    main()
