"""Stage 1: in-context example optimization, as the original's offline_icl_opti.

For every seed example (query, answer): the selector picks 3-6 aspects for the query, the critic scores the answer,
then up to `rounds` times the rewriter rewrites the LATEST answer using the LATEST critique (a chain: a rewrite that
scored worse is still the next round's starting point) and the critic scores the rewrite. The answer kept is the best
by TOTAL score over the selected aspects (a later answer replaces the best when its total is not lower). An example
stops once the best answer scores 5 on every aspect. All examples advance together, one batched call per role per
round. Pure over immutable data: the LLMs, the catalogue, the aspect cache and the stats counter are arguments.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Sequence

from jaxlm.align.llm import LLM, ask
from jaxlm.align.prompts import load_template
from jaxlm.align.reward import (AspectCache, Catalogue, JudgeConfig, evaluation_json, extract_field, score_responses,
                                select_aspects)
from jaxlm.align.state import Evaluation, Example, ICLRecord


@dataclass(frozen=True)
class ICLConfig:
    rounds: int = 5
    min_aspects: int = 3
    max_aspects: int = 6
    max_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    prefill: bool = False  # start the rewriter's answer with '{"new_response": "' (local backends)


_MARKERS = re.compile(r"^\s*<START>\s*|\s*<END>\s*$")


def parse_rewrite(text: str, stats: Counter) -> str | None:
    """The rewriter's new answer ('new_response', without its <START>/<END> markers); None when unusable
    (counted as 'rewrite_failed')."""
    out = extract_field(text, "new_response", stats,
                        placeholders=("...", "the full improved answer", "your new and improved answer"))
    if out is not None:
        out = _MARKERS.sub("", out).strip() or None
    if out is None:
        stats["rewrite_failed"] += 1
    return out


def _better_or_equal(new: Evaluation, best: Evaluation) -> bool:
    return new.ok and (not best.ok or new.total >= best.total)


def optimize_examples(examples: Sequence[Example], *, judge: LLM, rewriter: LLM, cat: Catalogue,
                      cache: AspectCache | None = None, stats: Counter | None = None, cfg: ICLConfig = ICLConfig(),
                      judge_cfg: JudgeConfig = JudgeConfig(), selector: LLM | None = None) -> tuple[ICLRecord, ...]:
    stats = Counter() if stats is None else stats
    jcfg = replace(judge_cfg, min_aspects=cfg.min_aspects, max_aspects=cfg.max_aspects)
    critic, rewrite_tpl = load_template("critic"), load_template("rewriter")
    sels = select_aspects(selector or judge, [e.query for e in examples], cat=cat, cache=cache, stats=stats,
                          cfg=jcfg, template=load_template("icl_aspect_selector"))
    evs = score_responses(judge, [(e.query, e.answer, s) for e, s in zip(examples, sels)], cat=cat, stats=stats,
                          cfg=jcfg, template=critic)
    recs = [ICLRecord(e, s, ev, 0, (ev.reward,)) for e, s, ev in zip(examples, sels, evs)]
    latest = [(e.answer, ev) for e, ev in zip(examples, evs)]  # the chain's current link per example
    for rnd in range(1, cfg.rounds + 1):
        active = [i for i, r in enumerate(recs) if not r.evaluation.all_perfect() and latest[i][1].ok]
        if not active:
            break
        prompts = [rewrite_tpl.render(query=recs[i].example.query, response=latest[i][0],
                                      evaluation=evaluation_json(latest[i][1])) for i in active]
        outs = ask(rewriter, prompts, ['{"new_response": "'] * len(prompts), prefill=cfg.prefill,
                   prefill_stop=['"}'], prefill_close='"}', max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                   top_p=cfg.top_p, seed=cfg.seed + rnd)
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
                if ev.ok:
                    latest[i] = (a, ev)  # the next round rewrites this answer, better or not
                if _better_or_equal(ev, r.evaluation):
                    stats["icl_kept"] += 1
                    best = replace(r, example=Example(r.example.query, a), evaluation=ev)
                else:
                    stats["icl_rejected"] += 1
            recs[i] = replace(best, rounds=rnd, history=r.history + (best.evaluation.reward,))
    return tuple(recs)
