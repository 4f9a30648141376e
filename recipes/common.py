"""Shared launcher for every recipe: argument parsing, device setup, data, the training loop, HF export.

A recipe is data: a `Recipe` with a name and named presets (RunConfigs: model, optimizer, phases with their
mixtures, FIM rates and schedules). `main(recipe, argv)` does the rest. Nothing here imports jax at module level,
so the simulated CPU device count can be set from `--mesh` before jax loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jaxlm.errors import JaxlmError
from jaxlm.train.config import RunConfig, apply_overrides, scale_steps, to_dict


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    presets: dict = field(default_factory=dict)  # name -> RunConfig
    default_preset: str = "tiny"
    # the model preset's vocab is replaced by the tokenizer's (the tiny presets); paper presets keep theirs
    vocab_from_tokenizer: tuple = ("tiny",)


def tiny_cosine_run(name: str, model_preset: str, optim, mix: dict, seed: int, steps: int = 300) -> RunConfig:
    """The tiny CPU default of a single-phase recipe: warmup then cosine to 10% (peak raised for a 2-layer model)."""
    from jaxlm.config import preset
    from jaxlm.train.config import LRSchedule, PhaseConfig, TrainConfig

    return RunConfig(
        name=name, model=preset(model_preset, dtype="bfloat16", param_dtype="float32"), optim=optim,
        train=TrainConfig(seq_len=128, global_batch=16, seed=seed, log_every=25, eval_batches=2, ckpt_every=50,
                          keep_latest=2, keep_release=4),
        phases=(PhaseConfig("main", steps, mix, 0.0, 0.5,
                            LRSchedule("cosine", 3e-3, 3e-4, warmup=10, decay_steps=steps - 10)),))


RECIPE_READS = ("the embedded corpus (Python's docs and standard library; held-out split for eval) or --data / "
                "--eval-data files; the embedded-corpus BPE tokenizer or --tokenizer; with --resume the run "
                "directory's last checkpoint")
RECIPE_WRITES = ("the run directory --out (default runs/<recipe>-<preset>[-N]): config.json, checkpoints/ (orbax: "
                 "the latest and the release steps), metrics.jsonl, loss_curve.png, summary.json and summary.txt; "
                 "--export-hf DIR: an HF model directory (config.json, safetensors, tokenizer); "
                 "--export-data-order FILE: the token ids of every step's batch. --print-config writes nothing")


def build_parser(recipe: Recipe) -> argparse.ArgumentParser:
    from jaxlm.cli import add_mesh_argument, command_parser

    p = command_parser(f"recipes.{recipe.name}", recipe.description, reads=RECIPE_READS, writes=RECIPE_WRITES,
                       epilog="Any hyperparameter: --set KEY=VALUE, e.g. --set optim.weight_decay=0.0 "
                              "--set phases.0.lr.peak=0.01 --set 'phases.*.fim_rate=0.5' "
                              "--set model.hidden_size=128 --set train.global_batch=32 "
                              "--set train.lr=1e-3 (all phase peaks). --print-config shows every key.")
    p.add_argument("--preset", default=recipe.default_preset, choices=sorted(recipe.presets),
                   help=f"model/schedule scale (default {recipe.default_preset}; 'paper' = the published run)")
    add_mesh_argument(p, "-1x1", "training mesh")
    p.add_argument("--out", default=None, help="run directory (default runs/<recipe>-<preset>[-N])")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the latest runs/<recipe>-<preset>*) from its last "
                        "checkpoint: parameters, optimizer, step, RNG and data order")
    p.add_argument("--data", action="append", default=[], metavar="[NAME[:KIND]=]PATH",
                   help="real data instead of the embedded corpus: jsonl/txt/parquet/ArrayRecord file, directory or "
                        "glob, or tfds:NAME[:SPLIT][@DATA_DIR]. Repeat per source; NAME must match the phase "
                        "mixtures (code, language); KIND is code|language (default: code for names starting "
                        "with 'code'). One unnamed PATH trains every phase on it.")
    p.add_argument("--eval-data", action="append", default=[], metavar="[NAME[:KIND]=]PATH",
                   help="held-out data for perplexity, same syntax as --data (default: the embedded held-out "
                        "split when training on the embedded corpus)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json / tokenizer.model / GGUF (default: BPE trained on the embedded corpus)")
    p.add_argument("--steps", type=int, default=None,
                   help="total steps; phases keep their share and schedules their shape")
    p.add_argument("--stop-at", type=int, default=None, help="stop after this global step (continue with --resume)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=None, help="shorthand for --set train.seed=N")
    p.add_argument("--export-hf", default=None, metavar="DIR", help="export the final checkpoint in HF format")
    p.add_argument("--export-data-order", default=None, metavar="FILE",
                   help="also write the token ids of every step's global batch (.npz, .npy or .jsonl), as LLM360 "
                        "publishes its data order")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--coordinator", default=None, help="multi-host: coordinator host:port (else auto-detected)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    return p


def resolve_config(recipe: Recipe, args, vocab_size: int | None = None) -> RunConfig:
    cfg = recipe.presets[args.preset]
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if vocab_size is not None and args.preset in recipe.vocab_from_tokenizer:
        cfg = dataclasses.replace(cfg, model=cfg.model.replace(vocab_size=int(vocab_size)))
    if args.steps is not None:
        cfg = scale_steps(cfg, args.steps)
    cfg = apply_overrides(cfg, overrides)
    return cfg


def default_out(recipe: Recipe, preset: str, resume: bool) -> Path:
    base = Path("runs") / f"{recipe.name}-{preset}"
    candidates = [base] + sorted((p for p in base.parent.glob(base.name + "-*") if p.name[len(base.name) + 1:].isdigit()),
                                 key=lambda p: int(p.name[len(base.name) + 1:]))
    used = [c for c in candidates if (c / "checkpoints").exists() and any((c / "checkpoints").iterdir())]
    if resume:
        return used[-1] if used else base
    if not used:
        return base
    n = 2
    while any(c == base.parent / f"{base.name}-{n}" for c in used):
        n += 1
    return base.parent / f"{base.name}-{n}"


def parse_data_args(items: list[str]) -> dict[str, tuple[str, str]]:
    """['code=/a', 'web:language=/b', '/c'] -> {name: (kind, path)}; an unnamed path is the source 'data'."""
    out = {}
    for item in items:
        name, kind, path = "data", "language", item
        head, sep, rest = item.partition("=")
        if sep and not os.path.exists(item) and "/" not in head and not head.startswith("tfds:"):
            name, path = head, rest
            name, _, k = name.partition(":")
            kind = k or ("code" if name.startswith("code") else "language")
        if kind not in ("code", "language"):
            raise JaxlmError(f"--data {item}: kind {kind!r} must be code or language")
        if name in out:
            raise JaxlmError(f"--data {item}: source {name!r} given twice")
        out[name] = (kind, path)
    return out


def build_data(cfg: RunConfig, args, tok, process_index: int, process_count: int):
    """(pipeline, sorted source names, eval batches {name: [batch]}, cfg with phase weights fitted to sources)."""
    from jaxlm import data as D

    t = cfg.train
    eval_bs = {}
    if args.data:
        given = parse_data_args(args.data)
        sources = {n: D.SourceSpec.from_path(p, kind=k) for n, (k, p) in given.items()}
        if list(given) == ["data"]:
            phases = tuple(dataclasses.replace(p, weights={"data": 1.0}) for p in cfg.phases)
            cfg = dataclasses.replace(cfg, phases=phases)
    else:
        sources = D.embedded_corpus()
    names = sorted(sources)
    for i, p in enumerate(cfg.phases):
        missing = sorted(k for k, w in p.weights.items() if w > 0 and k not in sources)
        if missing:
            raise JaxlmError(f"phase {i} ({p.name}) mixes sources {missing} but --data provides {names}; "
                             f"pass --data NAME=PATH for each, or --set phases.{i}.weights=...")
    dphases = tuple(D.PhaseSpec(steps=p.steps, weights={k: w for k, w in p.weights.items() if k in sources},
                                fim_rate=p.fim_rate, fim_spm_rate=p.fim_spm_rate) for p in cfg.phases)
    dcfg = D.DataConfig(seq_len=t.seq_len, global_batch=t.global_batch, seed=t.data_seed, sources=sources,
                        phases=dphases)
    pipe = D.build_pipeline(dcfg, tok, process_index=process_index, process_count=process_count)
    if t.eval_batches > 0:
        if args.eval_data:
            held = {n: D.SourceSpec.from_path(p, kind=k) for n, (k, p) in parse_data_args(args.eval_data).items()}
        elif args.data:
            held = {}  # user data has no held-out split unless --eval-data names one
        else:
            held = D.embedded_corpus(split="heldout")
        for name in sorted(held):
            eval_bs[name] = D.build_eval_batches(tok, name, t.seq_len, t.global_batch, t.eval_batches,
                                                 sources=held)
    return pipe, names, eval_bs, cfg


def save_run_tokenizer(tok, out: Path) -> None:
    """The run's tokenizer in <out>/tokenizer, so `jaxlm.load_model(out)` (serve, generate, eval) gets it back."""
    from jaxlm.errors import ConfigError

    try:
        tok.save(out / "tokenizer")
    except ConfigError:  # a tokenizer type without a file form: load_model then returns no tokenizer for the run
        pass


def load_tok(args):
    from jaxlm import data as D

    if args.tokenizer:
        return D.load_tokenizer(args.tokenizer)
    return D.default_tokenizer()


def enable_compile_cache() -> None:
    """Persist compiled programs (a re-run or --resume skips most compile time). JAXLM_COMPILE_CACHE=0 disables;
    the directory is $JAX_COMPILATION_CACHE_DIR, else $JAXLM_CACHE/xla (default ~/.cache/jaxlm/xla)."""
    if os.environ.get("JAXLM_COMPILE_CACHE", "1") == "0":
        return
    import jax

    root = os.environ.get("JAXLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxlm")
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(root, "xla")
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except OSError:
        pass


def main(recipe: Recipe, argv=None) -> int:
    from jaxlm.cli import run_command

    args = build_parser(recipe).parse_args(argv)
    return run_command(lambda a: _run(recipe, a), args, args.mesh)  # devices before jax is imported


def _run(recipe: Recipe, args) -> int:
    t0 = time.perf_counter()
    if args.print_config:
        print(json.dumps(to_dict(resolve_config(recipe, args)), indent=2))
        return 0
    from jaxlm.train import distributed

    enable_compile_cache()

    info = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax  # noqa: F401  (after device setup)

    from jaxlm.sharding import make_mesh
    from jaxlm.train.loop import train

    mesh = make_mesh(args.mesh)
    tok = load_tok(args)
    cfg = resolve_config(recipe, args, vocab_size=tok.vocab_size)
    if cfg.model.vocab_size < tok.vocab_size:
        raise JaxlmError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                         f"{tok.vocab_size} ({args.tokenizer or 'default tokenizer'})")
    out = Path(args.out) if args.out else default_out(recipe, args.preset, args.resume)
    pipe, sources, eval_bs, cfg = build_data(cfg, args, tok, info["process_index"], info["process_count"])
    if info["process_index"] == 0:
        save_run_tokenizer(tok, out)
    main_proc = info["process_index"] == 0
    if main_proc:
        where = ", ".join(args.data) if args.data else "the embedded corpus (Python's docs and standard library)"
        print(f"data: {where}; sources {sources}; held-out eval {sorted(eval_bs) or 'none'}; tokenizer "
              f"{args.tokenizer or 'embedded BPE'} (vocab {tok.vocab_size}); {info['process_count']} process(es), "
              f"{info['devices']} {info['platform']} devices")
    if args.export_data_order and main_proc:
        path = pipe.export_order(args.export_data_order, range(cfg.total_steps))
        print(f"data order of steps 0..{cfg.total_steps - 1} written to {path}")
    res = train(cfg, pipe, mesh, out, sources=sources, eval_batches=eval_bs, resume=args.resume,
                stop_at=args.stop_at, progress=False if args.no_progress or not main_proc else None,
                print_fn=print if main_proc else (lambda *a, **k: None),
                extra_meta={"recipe": recipe.name, "preset": args.preset, "launch": info,
                            "data": args.data or ["embedded"], "tokenizer": args.tokenizer or "default"})
    if args.export_hf and main_proc:
        from jaxlm.train.checkpoint import export_hf

        path = export_hf(res.out_dir, args.export_hf, tokenizer=tok)
        print(f"   HF export    {path}")
    if main_proc:
        print(f"   total time   {time.perf_counter() - t0:.0f} s")
    return 0
