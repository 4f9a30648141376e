"""Pandora's stage-(a) oracle diagnostic: can the video model follow a PERFECT action embedding at all?

The action text is replaced by one token, the action's class id (colour x direction of the sprite world; the step
count is dropped, so the class fixes which sprite moves and where, not how far; `--oracle full` adds the count, so
the next clip is a function of the frames and the token), and the video model + bag-of-words
embedding train on stage (a)'s loss (jaxlm.pandora.task.stage_loss, "dynamics"). Every `--probe-every` steps, on 2
fixed held-out batches of 32: the one-step x0 prediction at t = T-1 (pure noise under the zero-terminal-SNR
schedule, so x0 = -v and the prediction is the model's E[next clip | frames, action]) and its MSE to the true
(scaled residual) target with

    true      the row's own action
    other     another row's action (the batch rolled by one)
    no-move   predicting 0, i.e. "nothing moves" (copy the last frame)

An action-following video model has true < other and true < no-move. Variants are PandoraConfig overrides (JSON),
trained one after another in one process, each from the same seed, data and probe batches.

    python benchmarks/pandora_oracle.py --steps 200 --variant '{}' --variant '{"video_patch": 2}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def step_count(text: str) -> int:
    """The sprite world's step count of an action text (its _COUNT_TEXT phrasings): 1, 2 or 3."""
    t = str(text).lower()
    return 3 if ("three" in t or "3 " in t) else 2 if ("twice" in t or "two" in t or "2 " in t) else 1


def run_variant(overrides: dict, steps: int, batch: int, lr: float, probe_every: int, log=print,
                oracle_kind: str = "class") -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from benchmarks.record import load_average
    from jaxlm.config import pandora_preset
    from jaxlm.pandora import make_world
    from jaxlm.pandora.model import build_world_model, clip_target, default_tokenizer
    from jaxlm.pandora.pipeline import TransitionPipeline, heldout_batches
    from jaxlm.pandora.task import stage_loss

    world = make_world("sprites", frame_size=32, clip_len=4, context_frames=2)
    cfg = pandora_preset("pandora-tiny", frame_size=32, clip_len=4, context_frames=2, **overrides)
    tok = default_tokenizer(cfg)
    model = build_world_model(cfg, 0, pretrained_llm=False)  # the LLM is not used by stage (a)
    pipe = TransitionPipeline(world, tok, batch, max_action_len=cfg.max_action_tokens, seed=0)

    def oracle(b):
        ids, mask = np.zeros_like(b["action_ids"]), np.zeros_like(b["action_mask"])
        cls = b["action_class"]
        if oracle_kind == "full":  # class x step count: the clip is then a function of (frames, action)
            cls = cls * 3 + np.asarray([step_count(t) - 1 for t in b["action_text"]])
        ids[:, 0], mask[:, 0] = cls + 7, 1
        return {"before": jnp.asarray(b["before"]), "after": jnp.asarray(b["after"]),
                "action_ids": jnp.asarray(ids), "action_mask": jnp.asarray(mask)}

    probes = [oracle(b) for b in heldout_batches(world, tok, 32, 2, max_action_len=cfg.max_action_tokens)]
    g, params, rest = nnx.split(model, nnx.All(nnx.Param, nnx.Any(nnx.PathContains("video"),
                                                                  nnx.PathContains("bow"))), ...)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, min(20, steps // 10)), steps, lr * 0.1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched, b2=0.99))
    ost = opt.init(params)

    @jax.jit
    def step(params, ost, b, rng):
        loss, gr = jax.value_and_grad(lambda p: stage_loss(nnx.merge(g, p, rest), b, rng, "dynamics")[0].mean())(params)
        u, ost = opt.update(gr, ost, params)
        return optax.apply_updates(params, u), ost, loss

    @jax.jit
    def probe(params, b):
        m = nnx.merge(g, params, rest)
        before = b["before"][:, -cfg.context_frames:]
        x0 = clip_target(cfg, before, b["after"])
        noise = jax.random.normal(jax.random.key(3), x0.shape)  # x_T: the zero-terminal-SNR schedule's pure noise
        out = {"no-move": jnp.mean(x0 ** 2)}
        for name, idx in (("true", jnp.arange(x0.shape[0])), ("other", jnp.roll(jnp.arange(x0.shape[0]), 1))):
            ctx = m.bow_tokens(b["action_ids"][idx], b["action_mask"][idx])
            out[name] = jnp.mean((m.first_step_x0(before, ctx, noise) - x0) ** 2)
        return out

    t0, hist, rows = time.time(), [], []
    for s in range(steps):
        params, ost, loss = step(params, ost, oracle(pipe.next()), jax.random.fold_in(jax.random.key(1), s))
        hist.append(float(loss))
        if (s + 1) % probe_every == 0 or s == steps - 1:
            pr = [probe(params, b) for b in probes]
            pr = {k: float(np.mean([p[k] for p in pr])) for k in pr[0]}
            row = {"step": s + 1, "loss": float(np.mean(hist[-probe_every:])), **pr, "wall_s": time.time() - t0,
                   "load": load_average()}
            rows.append(row)
            log(f"  {json.dumps(overrides)} step {s + 1}: loss {row['loss']:.4f}  x0 err true {pr['true']:.4f}  "
                f"other {pr['other']:.4f}  no-move {pr['no-move']:.4f}  {row['wall_s']:.0f}s  load {row['load']:.1f}")
    return {"variant": overrides, "oracle": oracle_kind, "steps": steps, "batch": batch, "lr": lr, "curve": rows, **rows[-1]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", action="append", default=None, help="PandoraConfig overrides as JSON (repeatable)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--probe-every", type=int, default=50)
    ap.add_argument("--oracle", choices=("class", "full"), default="class",
                    help="class: colour x direction (the count dropped); full: also the step count")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    results = []
    for v in a.variant or ["{}"]:
        results.append(run_variant(json.loads(v), a.steps, a.batch, a.lr, a.probe_every, oracle_kind=a.oracle))
        if a.out:
            Path(a.out).write_text(json.dumps(results, indent=1))
    print("| variant | oracle | steps | x0 err true | other | no-move | wall s | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| `{json.dumps(r['variant'])}` | {r['oracle']} | {r['steps']} | {r['true']:.4f} | {r['other']:.4f} | "
              f"{r['no-move']:.4f} | {r['wall_s']:.0f} | {r['load']:.1f} |")
    return results


if __name__ == "__main__":
    main()
