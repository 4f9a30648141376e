"""Stage 1: in-context example optimization.

For every seed example (query, answer): the judge picks 3-6 aspects for the query, the critic scores the answer,
then up to `rounds` times: the rewriter proposes a new answer from the critique, the critic scores it, and the new
answer is kept if it is not worse (mean score >= the best so far). An example stops early once every chosen aspect
scores 5. All examples advance together, one batched call per role per round. Pure over immutable data: the LLMs,
the catalogue, the aspect cache and the stats counter are arguments.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Sequence

from jaxlm.align.llm import LLM, ask
from jaxlm.align.prompts import load_template
from jaxlm.align.reward import (AspectCache, Catalogue, JudgeConfig, extract_field, format_evaluation, score_responses,
                                select_aspects)
from jaxlm.align.state import Example, ICLRecord


@dataclass(frozen=True)
class ICLConfig:
    rounds: int = 5
    min_aspects: int = 3
    max_aspects: int = 6
    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    prefill: bool = False  # start the rewriter's answer with '{"new_response": "' (local backends)


def parse_rewrite(text: str, stats: Counter) -> str | None:
    """The rewriter's new answer ('new_response'); None when unusable (counted as 'rewrite_failed')."""
    out = extract_field(text, "new_response", stats, placeholders=("...", "the full improved answer"))
    if out is None:
        stats["rewrite_failed"] += 1
    return out


def optimize_examples(examples: Sequence[Example], *, judge: LLM, rewriter: LLM, cat: Catalogue,
                      cache: AspectCache | None = None, stats: Counter | None = None, cfg: ICLConfig = ICLConfig(),
                      judge_cfg: JudgeConfig = JudgeConfig(), selector: LLM | None = None) -> tuple[ICLRecord, ...]:
    stats = Counter() if stats is None else stats
    jcfg = replace(judge_cfg, min_aspects=cfg.min_aspects, max_aspects=cfg.max_aspects)
    critic, rewrite_tpl = load_template("critic"), load_template("rewriter")
    sels = select_aspects(selector or judge, [e.query for e in examples], cat=cat, cache=cache, stats=stats,
                          cfg=jcfg)
    evs = score_responses(judge, [(e.query, e.answer, s) for e, s in zip(examples, sels)], cat=cat, stats=stats,
                          cfg=jcfg, template=critic)
    recs = [ICLRecord(e, s, ev, 0, (ev.reward,)) for e, s, ev in zip(examples, sels, evs)]
    for rnd in range(1, cfg.rounds + 1):
        active = [i for i, r in enumerate(recs) if not r.evaluation.all_perfect()]
        if not active:
            break
        prompts = [rewrite_tpl.render(query=recs[i].example.query, response=recs[i].example.answer,
                                      evaluation=format_evaluation(recs[i].evaluation)) for i in active]
        outs = ask(rewriter, prompts, ['{"new_response": "'] * len(prompts), prefill=cfg.prefill,
                   prefill_stop=['"}'], max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                   seed=cfg.seed + rnd)
        cand = [(i, parse_rewrite(o.text, stats)) for i, o in zip(active, outs)]
        scored = [(i, a) for i, a in cand if a is not None]
        new_evs = score_responses(judge, [(recs[i].example.query, a, recs[i].selection) for i, a in scored], cat=cat,
                                  stats=stats, cfg=jcfg, template=critic)
        new_by_i = {i: (a, ev) for (i, a), ev in zip(scored, new_evs)}
        for i in active:
            r = recs[i]
            best = r
            if i in new_by_i:
                a, ev = new_by_i[i]
                if ev.ok and ev.reward >= r.evaluation.reward:
                    stats["icl_kept"] += 1
                    best = replace(r, example=Example(r.example.query, a), evaluation=ev)
                else:
                    stats["icl_rejected"] += 1
            recs[i] = replace(best, rounds=rnd, history=r.history + (best.evaluation.reward,))
    return tuple(recs)
