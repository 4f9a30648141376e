"""Analysis across a training run's checkpoints, the way LLM360's Analysis360 looks at a run.

    python -m recipes.analysis runs/crystal-tiny                     # every retained checkpoint
    python -m recipes.analysis runs/crystal-tiny --tasks jaxlm_heldout_cloze,jaxlm_heldout_lm --limit 40
    python -m recipes.analysis runs/crystal-tiny --steps 150,450 --mem-steps 12 --mem-k 16

For every retained checkpoint (or --steps):
  ppl      held-out perplexity per source, computed by the training engine's own evaluation (jaxlm.train.loop.
           evaluate_model) on the run's held-out batches (the embedded corpus' held-out split, or --eval-data);
  tasks    the chosen lm-evaluation-harness tasks through the `jaxlm` harness model (default: the offline cloze
           task; any task the harness knows, e.g. jaxlm_heldout_lm, jaxlm_code_exec, or your own --include-path);
  mem      LLM360-style memorization: training sequences taken at their exact step in the recorded data order
           (rebuilt from the run's config and checked against the data-iterator state saved in the checkpoint, or
           read from a --data-order file written by --export-data-order), a k-token prompt, and the fraction of the
           next k tokens the checkpoint reproduces greedily; data steps are spread over the whole run, so every
           checkpoint is scored on data it has seen and on data it has not seen yet (the control).
Results: OUT/analysis.jsonl (one record per number), OUT/analysis.md (a table per checkpoint) and OUT/analysis.png
(curves: perplexity and task scores against the checkpoint step; memorization against when the data was seen, one
line per checkpoint; seen vs not-yet-seen against the checkpoint step). Resumable: each (checkpoint, part) is
marked done in the jsonl when finished; a killed analysis re-run with the same command continues after the last
finished part (a half-written part is dropped and redone).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from jaxlm.errors import CheckpointError, ConfigError

PARTS = ("ppl", "tasks", "mem")
READS = ("RUN_DIR: a jaxlm training run (checkpoints/<step>/, config.json, the checkpoints' meta and data-iterator "
         "state); the run's tokenizer (the embedded-corpus BPE unless the run recorded --tokenizer); the embedded "
         "corpus (or --eval-data / the run's --data files); the harness tasks' data")
WRITES = ("OUT (default RUN_DIR/analysis): analysis.jsonl (appended as it goes; resumable), analysis.md (table), "
          "analysis.png (curves)")


def build_parser() -> argparse.ArgumentParser:
    from jaxlm.cli import add_mesh_argument, command_parser

    p = command_parser("recipes.analysis", __doc__.strip(), reads=READS, writes=WRITES)
    p.add_argument("run_dir", help="the training run directory")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/analysis)")
    p.add_argument("--steps", default=None, help="comma-separated checkpoint steps (default: every retained one)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"which analyses, from {','.join(PARTS)}")
    p.add_argument("--tasks", default="jaxlm_heldout_cloze", help="harness tasks, comma-separated ('' = none)")
    p.add_argument("--limit", type=float, default=None, help="harness --limit per task (default: all documents)")
    p.add_argument("--include-path", default=None, help="a folder of your own harness YAML tasks")
    p.add_argument("--eval-batches", type=int, default=None,
                   help="held-out batches per source (default: the run's train.eval_batches)")
    p.add_argument("--eval-data", action="append", default=[], metavar="NAME=PATH",
                   help="held-out data instead of the run's (same syntax as the recipes' --eval-data)")
    p.add_argument("--mem-steps", type=int, default=8, help="data steps sampled over the run for memorization")
    p.add_argument("--mem-rows", type=int, default=4, help="training sequences per sampled data step")
    p.add_argument("--mem-k", type=int, default=32, help="prompt length and continuation length k (tokens)")
    p.add_argument("--data-order", default=None,
                   help="a data-order file from --export-data-order (.npz) instead of rebuilding the order")
    p.add_argument("--max-checkpoints", type=int, default=None,
                   help="stop after analysing this many checkpoints in this invocation (resume later)")
    p.add_argument("--seed", type=int, default=0, help="which rows of each sampled step (seeded)")
    add_mesh_argument(p, "-1x1", "mesh of the perplexity evaluation")
    return p


# ------------------------------------------------------------------------------------------------ records
class Records:
    """analysis.jsonl: records plus {"kind": "done", "step", "part"} markers; resumable."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError:  # the last line of a killed run
                    break
        self.done = {(r["step"], r["part"]) for r in self.rows if r.get("kind") == "done"}
        kept = [r for r in self.rows if r.get("kind") in ("done", "settings") or (r["step"], r["kind"]) in self.done]
        if path.exists():  # drop the records of a part that was not finished
            self.rows = kept
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)

    def check_settings(self, settings: dict):
        """The settings the numbers depend on: recorded by the first run, the same on every resume."""
        old = next((r for r in self.rows if r.get("kind") == "settings"), None)
        if old is None:
            self.write([{"kind": "settings", "step": -1, **settings}])
        elif {k: v for k, v in old.items() if k not in ("kind", "step")} != settings:
            diff = sorted(k for k in settings if old.get(k) != settings[k])
            raise ConfigError(f"{self.path} was written with other settings ({', '.join(f'{k}: {old.get(k)!r}' for k in diff)}); "
                              f"use the same flags to resume, or another --out")

    def write(self, recs: list[dict], step: int | None = None, part: str | None = None):
        if part is not None:
            recs = recs + [{"kind": "done", "step": step, "part": part, "time": time.time()}]
        with open(self.path, "a") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows += recs
        if part is not None:
            self.done.add((step, part))


# ------------------------------------------------------------------------------------------------ the run
class Run:
    """What the analysis needs from a run directory: its config, checkpoints, tokenizer and data order."""

    def __init__(self, run_dir, data_order=None):
        from jaxlm.io.run import checkpoint_dir, is_run_dir

        self.dir = Path(run_dir)
        if not is_run_dir(self.dir):
            raise CheckpointError(f"{self.dir}: not a training run (expected checkpoints/<step>/ folders written by "
                                  f"jaxlm.train)")
        cfg_file = self.dir / "config.json"
        if not cfg_file.exists():
            raise CheckpointError(f"{cfg_file}: missing (every jaxlm run writes its config there)")
        self.config = json.loads(cfg_file.read_text())
        self.steps = sorted(int(c.name) for c in checkpoint_dir(self.dir).iterdir() if c.name.isdigit())
        from jaxlm.eval.harness import read_run_meta, run_tokenizer

        self.meta = read_run_meta(self.dir)
        self.tokenizer = run_tokenizer(self.dir)
        self.total_steps = sum(int(p["steps"]) for p in self.config["phases"])
        self.seq_len = int(self.config["train"]["seq_len"])
        self._order = None
        self._pipe = None
        if data_order is not None:
            import numpy as np

            f = Path(data_order)
            if not f.exists():
                raise ConfigError(f"--data-order {f}: no such file")
            z = np.load(f)
            self._order = {int(s): t for s, t in zip(z["steps"], z["tokens"])}

    def data_sources(self) -> dict:
        from jaxlm import data as D
        from recipes.common import parse_data_args

        given = [d for d in self.meta.get("data", ["embedded"]) if d != "embedded"]
        if not given:
            return D.embedded_corpus()
        return {n: D.SourceSpec.from_path(p, kind=k) for n, (k, p) in parse_data_args(given).items()}

    def pipeline(self):
        """The run's data pipeline, rebuilt from its config, checked against the order its checkpoint recorded."""
        if self._pipe is None:
            from jaxlm import data as D

            t, sources = self.config["train"], self.data_sources()
            phases = tuple(D.PhaseSpec(steps=int(p["steps"]), weights={k: float(w) for k, w in p["weights"].items()
                                                                       if k in sources and w > 0},
                                       fim_rate=float(p["fim_rate"]), fim_spm_rate=float(p["fim_spm_rate"]))
                           for p in self.config["phases"])
            dcfg = D.DataConfig(seq_len=int(t["seq_len"]), global_batch=int(t["global_batch"]),
                                seed=int(t.get("data_seed", 0)), sources=sources, phases=phases)
            pipe = D.build_pipeline(dcfg, self.tokenizer)
            saved = self.data_state().get("config")
            if saved is not None and saved != pipe.get_state()["config"]:
                raise ConfigError(f"{self.dir}: the rebuilt data order differs from the one recorded in the "
                                  f"checkpoint (different data files or tokenizer?); pass --data-order FILE")
            self._pipe = pipe
        return self._pipe

    def data_state(self) -> dict:
        import orbax.checkpoint as ocp

        from jaxlm.io.run import _manager, checkpoint_dir

        mgr = _manager(checkpoint_dir(self.dir))
        try:
            return mgr.restore(self.steps[-1], args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
        finally:
            mgr.close()

    def sequences(self, step: int):
        """The token rows [global_batch, seq_len + 1] trained on at `step`."""
        import numpy as np

        if self._order is not None:
            if step not in self._order:
                raise ConfigError(f"--data-order has no step {step} (it holds {min(self._order)}..{max(self._order)})")
            return self._order[step]
        b = self.pipeline().batch_at(step)
        return np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1)

    def eval_batches(self, args) -> dict:
        from jaxlm import data as D
        from recipes.common import parse_data_args

        t = self.config["train"]
        n = args.eval_batches if args.eval_batches is not None else max(int(t.get("eval_batches", 2)), 1)
        if args.eval_data:
            held = {k: D.SourceSpec.from_path(p, kind=kd) for k, (kd, p) in parse_data_args(args.eval_data).items()}
        elif [d for d in self.meta.get("data", ["embedded"]) if d != "embedded"]:
            return {}
        else:
            held = D.embedded_corpus(split="heldout")
        return {k: D.build_eval_batches(self.tokenizer, k, self.seq_len, int(t["global_batch"]), n, sources=held)
                for k in sorted(held)}


# ------------------------------------------------------------------------------------------------ parts
def part_ppl(model, cfg, run: Run, batches: dict, mesh, step: int) -> list[dict]:
    from jaxlm.train.loop import evaluate_model
    from jaxlm.train.task import LMTask

    ev = evaluate_model(LMTask(cfg, sorted(batches)), model, batches, mesh)
    return [{"kind": "ppl", "step": step, "source": k, "loss": ev[f"eval/{k}/loss"], "ppl": ev[f"eval/{k}/ppl"]}
            for k in sorted(batches)]


def part_tasks(model, run: Run, args, step: int) -> list[dict]:
    import lm_eval

    from jaxlm.eval import JaxlmLM, task_manager

    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks:
        return []
    lm = JaxlmLM(model=model, tokenizer=run.tokenizer, truncation="left")
    if not hasattr(args, "_task_manager"):  # built once per analysis (indexing task files takes seconds)
        args._task_manager = task_manager([args.include_path] if args.include_path else None, tasks=tasks)
    res = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=args.limit, confirm_run_unsafe_code=True,
                                  task_manager=args._task_manager,
                                  random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                  fewshot_random_seed=args.seed)
    out = []
    for task, metrics in sorted(res["results"].items()):
        for m, v in sorted(metrics.items()):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in m and m != "sample_len":
                out.append({"kind": "tasks", "step": step, "task": task, "metric": m.split(",")[0],
                            "value": float(v)})
    return out


def memorization_plan(run: Run, args) -> list[tuple[int, int]]:
    """(data step, row) pairs: `mem_steps` data steps evenly spread over the run, `mem_rows` seeded rows each."""
    import numpy as np

    if 2 * args.mem_k > run.seq_len + 1:
        raise ConfigError(f"--mem-k {args.mem_k}: prompt + continuation ({2 * args.mem_k}) exceed the run's "
                          f"sequences ({run.seq_len + 1} tokens)")
    steps = sorted({int(s) for s in np.linspace(0, run.total_steps - 1, args.mem_steps).round()})
    B = int(run.config["train"]["global_batch"])
    rng = np.random.default_rng(args.seed)
    return [(s, int(r)) for s in steps for r in sorted(rng.choice(B, min(args.mem_rows, B), replace=False))]


def part_mem(model, run: Run, plan, args, step: int) -> list[dict]:
    import numpy as np

    from jaxlm.infer.generate import Generator

    k = args.mem_k
    rows = {s: run.sequences(s) for s in sorted({s for s, _ in plan})}
    seqs = [rows[s][r] for s, r in plan]
    g = Generator(model, None, eos_ids=[])
    gen = g.generate_ids([list(map(int, q[:k])) for q in seqs], max_new_tokens=k, ignore_eos=True)
    out = []
    for (s, r), q, o in zip(plan, seqs, gen):
        truth = np.asarray(q[k:2 * k])
        score = float(np.mean(np.asarray(o[:k]) == truth))
        out.append({"kind": "mem", "step": step, "data_step": s, "row": r, "score": score,
                    "seen": bool(s < step)})
    return out


# ------------------------------------------------------------------------------------------------ reports
def summarize(rows: list[dict]) -> dict:
    """{step: {column: value}}: perplexity per source, task metrics, memorization of seen / unseen data."""
    table: dict[int, dict] = {}
    for r in rows:
        t = table.setdefault(r["step"], {})
        if r["kind"] == "ppl":
            t[f"ppl/{r['source']}"] = r["ppl"]
        elif r["kind"] == "tasks":
            t[f"{r['task']}/{r['metric']}"] = r["value"]
    for step, t in table.items():
        mem = [r for r in rows if r["kind"] == "mem" and r["step"] == step]
        for name, sel in (("mem/seen", [m for m in mem if m["seen"]]), ("mem/unseen", [m for m in mem if not m["seen"]])):
            if sel:
                t[name] = sum(m["score"] for m in sel) / len(sel)
    return dict(sorted(table.items()))


def write_table(rows: list[dict], path: Path, title: str) -> str:
    table = summarize(rows)
    cols = sorted({c for t in table.values() for c in t})
    lines = [f"# {title}", "", "| step | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for step, t in table.items():
        lines.append(f"| {step} | " + " | ".join(f"{t[c]:.4g}" if c in t else "" for c in cols) + " |")
    lines += ["", "mem/seen: mean fraction of the k tokens after a k-token training prompt reproduced greedily, over "
              "sequences trained on before the checkpoint; mem/unseen: the same for sequences trained on later "
              "(the control)."]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    table = summarize(rows)
    steps = list(table)
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    ppl_cols = sorted({c for t in table.values() for c in t if c.startswith("ppl/")})
    for c in ppl_cols:
        ax[0, 0].plot(steps, [table[s].get(c, math.nan) for s in steps], "o-", label=c[4:])
    ax[0, 0].set(title="held-out perplexity", xlabel="checkpoint step", ylabel="perplexity")
    task_cols = sorted({c for t in table.values() for c in t if not c.startswith(("ppl/", "mem/"))
                        and "perplexity" not in c})  # accuracies, bits per byte, pass@k (perplexities: the table)
    for c in task_cols:
        ax[0, 1].plot(steps, [table[s].get(c, math.nan) for s in steps], "o-", label=c)
    ax[0, 1].set(title="harness tasks (perplexities in analysis.md)", xlabel="checkpoint step")
    mem = [r for r in rows if r["kind"] == "mem"]
    for s in steps:
        by = {}
        for m in (m for m in mem if m["step"] == s):
            by.setdefault(m["data_step"], []).append(m["score"])
        if by:
            xs = sorted(by)
            ax[1, 0].plot(xs, [sum(by[x]) / len(by[x]) for x in xs], "o-", label=f"checkpoint {s}")
            ax[1, 0].axvline(s, ls=":", lw=0.8, color=ax[1, 0].lines[-1].get_color())
    ax[1, 0].set(title="memorization vs when the data was seen (dotted: checkpoint step)",
                 xlabel="data step (position in the recorded order)", ylabel="fraction of k tokens reproduced")
    for c in ("mem/seen", "mem/unseen"):
        ax[1, 1].plot(steps, [table[s].get(c, math.nan) for s in steps], "o-", label=c[4:])
    ax[1, 1].set(title="memorization: seen vs not-yet-seen data", xlabel="checkpoint step")
    for a in ax.flat:
        if a.lines:
            a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ main
def analyse(args) -> dict:
    from jaxlm.io.run import restore_run
    from jaxlm.sharding import make_mesh

    run = Run(args.run_dir, args.data_order)
    out = Path(args.out) if args.out else run.dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ConfigError(f"--parts {args.parts}: unknown {bad} (expected some of {list(PARTS)})")
    steps = run.steps if args.steps is None else [int(s) for s in args.steps.split(",")]
    missing = sorted(set(steps) - set(run.steps))
    if missing:
        raise CheckpointError(f"--steps {missing}: not among the run's checkpoints {run.steps}")
    recs = Records(out / "analysis.jsonl")
    recs.check_settings({"tasks": args.tasks, "limit": args.limit, "include_path": args.include_path,
                         "eval_batches": args.eval_batches, "eval_data": list(args.eval_data),
                         "mem_steps": args.mem_steps, "mem_rows": args.mem_rows, "mem_k": args.mem_k,
                         "seed": args.seed, "data_order": args.data_order})
    mesh = make_mesh(args.mesh)
    batches = run.eval_batches(args) if "ppl" in parts else {}
    plan = memorization_plan(run, args) if "mem" in parts else []
    analysed = 0
    for step in steps:
        todo = [p for p in parts if (step, p) not in recs.done]
        if not todo:
            continue
        if args.max_checkpoints is not None and analysed >= args.max_checkpoints:
            print(f"stopping after {analysed} checkpoint(s) (--max-checkpoints); re-run to continue")
            break
        t0 = time.perf_counter()
        model, cfg, _ = restore_run(run.dir, step)
        for part in todo:
            if part == "ppl" and batches:
                r = part_ppl(model, cfg, run, batches, mesh, step)
            elif part == "tasks":
                r = part_tasks(model, run, args, step)
            elif part == "mem":
                r = part_mem(model, run, plan, args, step)
            else:
                r = []
            recs.write(r, step, part)
        analysed += 1
        row = summarize([x for x in recs.rows if x.get("step") == step and x["kind"] in PARTS]).get(step, {})
        print(f"checkpoint {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items())
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = [r for r in recs.rows if r["kind"] not in ("done", "settings")]
    title = f"{run.dir.name}: analysis over checkpoints {steps}"
    table = write_table(rows, out / "analysis.md", title)
    png = plot(rows, out / "analysis.png", title)
    print(table)
    print(f"results: {out / 'analysis.jsonl'}, {out / 'analysis.md'}" + (f", {png}" if png else ""))
    return {"out": out, "summary": summarize(rows), "png": png}


def main(argv=None) -> int:
    from jaxlm.cli import run_command

    def run(a) -> int:
        analyse(a)  # returns the results; the command's status is 0
        return 0

    args = build_parser().parse_args(argv)
    return run_command(run, args, args.mesh)


if __name__ == "__main__":
    sys.exit(main())
