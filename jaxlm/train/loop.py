"""The generic training loop: data -> jitted step -> metrics, eval, checkpoints; resume; NaN guard; summary.

`train(cfg, pipeline, mesh, out_dir, task=...)` trains any Task (`jaxlm.train.task`; default: the next-token
`LMTask` of `cfg.model`) and is used by every recipe. The pipeline is any object with `next() -> {key: numpy
array}` (this process's rows, the keys of the Task's batch_spec; an optional "step" is checked), `get_state()` and
`set_state(state)` (JSON), e.g. `jaxlm.data.build_pipeline(...)` for tokens or `ArrayPipeline` for arrays.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from jaxlm.errors import CheckpointError, ConfigError, NonFiniteLossError  # noqa: F401  (importable from here)
from jaxlm.train.checkpoint import Checkpointer, check_compatible, release_steps
from jaxlm.train.config import RunConfig, to_dict
from jaxlm.train.metrics import (MetricsLog, Progress, device_peak_flops, phase_loss_summary, plot_loss_curve,
                                 read_jsonl)
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import param_count, setup_state
from jaxlm.train.step import make_eval_step, make_step, to_device_batch
from jaxlm.train.task import LMTask


@dataclass
class RunResult:
    out_dir: Path
    final_step: int
    summary: dict
    losses: dict = field(default_factory=dict)  # step -> loss for the steps run in this call
    state: object = None  # the final TrainState (sharded on the run's mesh)
    rest: object = None   # the frozen rest the step saw (see jaxlm.train.state.Setup)


def evaluate(eval_step, params, rest, eval_batches: dict, mesh, spec) -> dict:
    """{"eval/<name>/loss", "eval/<name>/ppl"} over held-out batches (global rows) with a `make_eval_step` function:
    loss = summed eval loss / summed weight, ppl = exp(loss)."""
    out = {}
    for name, batches in eval_batches.items():
        tot = cnt = 0.0
        for b in batches:
            db = to_device_batch(b, mesh, spec, global_rows=True)
            s, c = eval_step(params, rest, db)
            tot += float(s)
            cnt += float(c)
        if cnt:
            loss = tot / cnt
            out[f"eval/{name}/loss"] = loss
            out[f"eval/{name}/ppl"] = float(math.exp(min(loss, 80.0)))
    return out


def evaluate_model(task, model, eval_batches: dict, mesh) -> dict:
    """`evaluate` for a module outside a training run (e.g. a teacher): split by the Task's param_filter, placed on
    `mesh` by its logical axes, scored with the Task's eval_loss."""
    from flax import nnx

    from jaxlm.sharding import state_shardings
    from jaxlm.train.state import ModelDef, param_shardings

    graphdef, params, rest = nnx.split(model, getattr(task, "param_filter", nnx.Param), ...)
    p_sh, r_sh = param_shardings(params, mesh), nnx.to_pure_dict(state_shardings(rest, mesh))
    step = make_eval_step(task, ModelDef(graphdef, getattr(task, "cfg", None), task), mesh, p_sh, r_sh)
    keys = getattr(task, "eval_keys", None) or task.batch_spec
    return evaluate(step, jax.device_put(nnx.to_pure_dict(params), p_sh), jax.device_put(nnx.to_pure_dict(rest), r_sh),
                    eval_batches, mesh, {k: task.batch_spec[k] for k in keys})


def train(cfg: RunConfig, pipeline, mesh, out_dir, *, task=None, sources: list[str] | None = None,
          eval_batches: dict | None = None, resume: bool = False, stop_at: int | None = None,
          extra_meta: dict | None = None, progress: bool | None = None, print_fn=print,
          plot: bool = True) -> RunResult:
    """Train `task` (default: `LMTask(cfg.model, sources)`) with the optimizer, phases and loop settings of `cfg`
    on `pipeline` over `mesh`, writing everything under `out_dir`.

    sources: the LM task's data source names (source_id indexes them). eval_batches: {name: [host batch]} of
    global rows, evaluated with the Task's eval_loss at the start, at phase ends and every train.eval_every steps.
    resume: continue from the latest checkpoint in out_dir/checkpoints (exact: params, optimizer, step, RNG and
    data iterator). stop_at: stop after this many total steps (a run can be continued later with resume).
    plot=False skips the loss-curve PNG.
    """
    cfg = cfg.validate()
    t = cfg.train
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    total = cfg.total_steps
    end = total if stop_at is None else min(int(stop_at), total)
    bounds = cfg.phase_bounds()
    names = [p.name for p in cfg.phases]
    eval_batches = eval_batches or {}
    if task is None:
        task = LMTask(cfg.model, sources if sources is not None else ["data"])
    sources = list(sources if sources is not None else getattr(task, "sources", []))

    micro = t.global_batch // t.grad_accum
    task.check_mesh(mesh, t.global_batch)
    task.check_mesh(mesh, micro)
    for name, bs in eval_batches.items():
        for b in bs[:1]:
            task.check_mesh(mesh, int(np.asarray(next(iter(b.values()))).shape[0]))

    setup = setup_state(task, lambda p: make_optimizer(cfg, p), mesh, t.seed)
    mdef, shardings, tx = setup.mdef, setup.shardings, setup.tx
    opt_structure = str(jax.tree.structure(setup.abstract.opt_state))
    compat = {**task.compat(cfg), "optimizer": {"structure": opt_structure}}
    meta = {"compat": compat, "config": to_dict(cfg), **(extra_meta or {})}

    ckpt = Checkpointer(out_dir / "checkpoints", save_every=t.ckpt_every, keep_latest=t.keep_latest,
                        release=release_steps(total, t.keep_release), total_steps=total, async_save=t.async_ckpt)
    start = 0
    existing = ckpt.steps()
    if resume and existing:
        last = existing[-1]
        try:
            saved_meta = ckpt.read_meta(last)
            check_compatible(saved_meta.get("compat", {}), compat, f"{ckpt.directory} step {last}")
            state, data_state, _ = ckpt.restore(last, setup.abstract)
            pipeline.set_state(data_state)
            start = int(state.step)
            if start != last:
                raise CheckpointError(f"checkpoint {ckpt.directory}/{last} holds step {start}")
            rest = setup.rest()
        except BaseException:
            ckpt.close()
            raise
        print_fn(f"resumed from {ckpt.directory}/{last} (step {start} of {total})")
    elif existing and not resume:
        ckpt.close()
        raise ConfigError(f"{out_dir} already holds checkpoints {existing}; pass --resume to continue that run "
                          f"or choose another --out")
    else:
        if resume:
            print_fn(f"--resume: no checkpoint in {ckpt.directory}; starting from step 0")
        state, rest = setup.initial()

    train_step = make_step(task, mdef, tx, cfg, mesh, shardings, setup.rest_shardings)
    eval_step = make_eval_step(task, mdef, mesh, shardings.params, setup.rest_shardings)
    spec = task.batch_spec
    eval_spec = {k: spec[k] for k in (getattr(task, "eval_keys", None) or spec)}
    main = jax.process_index() == 0  # one writer of metrics, plots and summaries on multi-host runs
    log = MetricsLog(out_dir / "metrics.jsonl", resume_step=start if start > 0 else None) if main else _NullLog()
    if main:
        (out_dir / "config.json").write_text(json.dumps(meta["config"], indent=2))

    n_params = param_count(state.params)
    unit = task.units
    upe = task.units_per_example(cfg)
    fpt = task.flops_per_example(cfg) / upe or float("nan")  # FLOPs per unit (token / example); nan = unknown
    peak, peak_src = device_peak_flops(t.peak_tflops)
    peak_total = peak * jax.device_count()
    tokens_per_step = t.global_batch * upe
    bar = Progress(end, start=start, log_every=t.log_every, enabled=progress,
                   stream=None if main else open(os.devnull, "w"))
    print_fn(f"{cfg.name}: {n_params / 1e6:.2f}M params, {total} steps in {len(cfg.phases)} phase(s), "
             f"batch {t.global_batch}" + (f"x{upe} {unit}" if upe > 1 else f" {unit}") + f", mesh {dict(mesh.shape)}, out {out_dir}")

    losses: dict[int, float] = {}
    t_run = time.perf_counter()
    step_times: list[float] = []
    tokens_done = 0
    time_done = 0.0
    last_good = ckpt.latest_step() if start else None
    status = "completed"
    try:
        if eval_batches and start == 0 and end > 0:  # the starting point of the held-out curves
            ev = evaluate(eval_step, state.params, rest, eval_batches, mesh, eval_spec)
            log.write({"kind": "eval", "step": 0, "phase": names[0], **ev})
        if start < end:
            bar.message(f"compiling the train step (first step {start}) ...")
        for step in range(start, end):
            phase_i = next(i for i, (a, b) in enumerate(bounds) if step < b or i == len(bounds) - 1)
            host_batch = pipeline.next()
            if "step" in host_batch and int(np.asarray(host_batch["step"]).reshape(-1)[0]) != step:
                raise CheckpointError(f"data pipeline is at step {int(np.asarray(host_batch['step']).reshape(-1)[0])}"
                                      f" but training is at step {step}")
            t0 = time.perf_counter()
            batch = to_device_batch(host_batch, mesh, spec)
            state, m = train_step(state, batch, rest)
            m = jax.device_get(m)
            dt = time.perf_counter() - t0
            if step > start:  # the first step includes compilation
                step_times.append(dt)
                tokens_done += tokens_per_step
                time_done += dt
            loss = float(m["loss"])
            if not bool(m["finite"]):
                ckpt.wait()
                raise _nonfinite(step, phase_i, names, loss, float(m["grad_norm"]), host_batch, sources,
                                 out_dir, ckpt)
            losses[step] = loss
            recent = step_times[-20:]
            sec = sum(recent) / len(recent) if recent else float("nan")  # the first step is mostly compile
            tok_s = tokens_per_step / sec if recent else float("nan")
            mfu = tok_s * fpt / peak_total if peak_total > 0 else float("nan")
            rec = {"kind": "train", "step": step, "phase": names[phase_i], "loss": loss,
                   "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"]), f"{unit}_per_s": tok_s, "mfu": mfu,
                   "time": time.perf_counter() - t_run, **task.log_metrics(m)}
            log.write(rec)
            bar.update(step, names[phase_i], loss, tok_s, mfu, sec * (end - step - 1))
            done = step + 1
            is_phase_end = any(done == b for _, b in bounds)
            if eval_batches and (is_phase_end or done == end or (t.eval_every and done % t.eval_every == 0)):
                ev = evaluate(eval_step, state.params, rest, eval_batches, mesh, eval_spec)
                log.write({"kind": "eval", "step": done, "phase": names[phase_i], **ev})
                if is_phase_end or done == end:
                    bar.message(f"  eval after step {done} ({names[phase_i]}): " + ", ".join(
                        f"{k.split('/')[1]} ppl {v:.2f}" for k, v in ev.items() if k.endswith("/ppl")))
            if ckpt.should_save(done) or done == end:
                ckpt.save(done, state, pipeline.get_state(), meta)
                last_good = done
    except KeyboardInterrupt:
        status = "interrupted"
        bar.message("interrupted: waiting for checkpoints to finish")
    finally:
        log.close()
        ckpt.close()

    if not main:
        return RunResult(out_dir, end, {}, losses, state, rest)
    records = read_jsonl(out_dir / "metrics.jsonl")
    phases = phase_loss_summary(records, bounds, names)
    png = plot_loss_curve(records, bounds, names, out_dir / "loss_curve.png",
                          title=f"{cfg.name} training loss") if plot else None
    final_eval = {}
    for r in records:
        if r.get("kind") == "eval":
            final_eval = {k: v for k, v in r.items() if k.startswith("eval/")}
    wall = time.perf_counter() - t_run
    summary = {
        "run": cfg.name, "task": task.name, "status": status, "steps": [start, end], "total_steps": total,
        "params": n_params, "unit": unit, f"{unit}_per_step": tokens_per_step, "wall_seconds": wall,
        f"{unit}_per_s": tokens_done / time_done if time_done else None,
        "mfu": (tokens_done / time_done) * fpt / peak_total if time_done and peak_total > 0 else None,
        "peak_flops_per_device": peak, "peak_source": peak_src,
        "phases": phases, "final_eval": final_eval, "checkpoints": _list_ckpts(out_dir),
        "last_checkpoint": last_good,
        "outputs": {"dir": str(out_dir), "metrics": str(out_dir / "metrics.jsonl"),
                    "loss_curve": str(png) if png else None, "summary": str(out_dir / "summary.json"),
                    "checkpoints": str(out_dir / "checkpoints"), "config": str(out_dir / "config.json")},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    text = format_summary(summary)
    (out_dir / "summary.txt").write_text(text + "\n")
    print_fn(text)
    return RunResult(out_dir, end, summary, losses, state, rest)


class _NullLog:
    def write(self, record):
        pass

    def close(self):
        pass


def _list_ckpts(out_dir: Path) -> list[int]:
    d = out_dir / "checkpoints"
    if not d.exists():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def _nonfinite(step, phase_i, names, loss, gnorm, host_batch, sources, out_dir, ckpt) -> NonFiniteLossError:
    bad = out_dir / f"nonfinite_batch_step{step}.npz"
    if jax.process_count() > 1:
        bad = bad.with_name(f"nonfinite_batch_step{step}_process{jax.process_index()}.npz")
    np.savez(bad, **{k: np.asarray(v) for k, v in host_batch.items()})
    src = np.asarray(host_batch.get("source_id", []))
    counts = {s: int((src == i).sum()) for i, s in enumerate(sources)} if src.size else {}
    kept = _list_ckpts(out_dir)
    last = kept[-1] if kept else None
    where = f"{ckpt.directory}/{last}" if last is not None else "none saved yet"
    return NonFiniteLossError(
        f"non-finite training loss at step {step} (phase {names[phase_i]}): loss={loss}, grad_norm={gnorm}. "
        f"The batch (rows by source: {counts}) is saved at {bad}. Training stopped; the last good checkpoint "
        f"is step {last} ({where}); resume from it with --resume after lowering the learning rate.")


def format_summary(s: dict) -> str:
    lines = [f"== {s['run']}: {s['status']}, steps {s['steps'][0]}..{s['steps'][1]} of {s['total_steps']} "
             f"in {s['wall_seconds']:.0f} s"]
    unit = s.get("unit", "tokens")
    if s.get(f"{unit}_per_s"):
        mfu = s.get("mfu")
        lines.append(f"   throughput {s[f'{unit}_per_s']:.0f} {unit}/s"
                     + (f", MFU {100 * mfu:.2f}% ({s['peak_source']})" if mfu is not None and mfu == mfu else ""))
    for p in s["phases"]:
        lines.append(f"   {p['phase']:<10} steps {p['steps'][0]:>5}-{p['steps'][1]:<5} loss "
                     f"{p['loss_start']:.3f} -> {p['loss_end']:.3f}" + ("" if p["falling"] else "  (NOT falling)"))
    if s["final_eval"]:
        lines.append("   held-out perplexity: " + ", ".join(
            f"{k.split('/')[1]} {v:.2f}" for k, v in s["final_eval"].items() if k.endswith("/ppl")))
    o = s["outputs"]
    lines.append(f"   metrics      {o['metrics']}")
    if o.get("loss_curve"):
        lines.append(f"   loss curve   {o['loss_curve']}")
    lines.append(f"   summary      {o['summary']}")
    lines.append(f"   checkpoints  {o['checkpoints']}  (steps {s['checkpoints']})")
    return "\n".join(lines)
