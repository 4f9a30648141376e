"""A just-eval-style harness: a judge scores responses 1-5 on helpfulness, clarity, factuality, depth and
engagement (regular queries) and on safety (harmful queries), for several systems (e.g. the base model with the
default prompt vs with the optimized prompt and examples). N/A counts as 5 as in just-eval; judgements that cannot be
parsed after retries are counted and left out of the means (never silently dropped). Results: JSON + markdown.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from jaxlm.align.llm import LLM
from jaxlm.align.prompts import STOP, Template, base_prompt, load_template
from jaxlm.align.reward import Catalogue, JudgeConfig, judge_ask, parse_scores, score_prefix
from jaxlm.align.state import Example

MULTI_ASPECTS = ("helpfulness", "clarity", "factuality", "depth", "engagement")


@dataclass(frozen=True)
class EvalConfig:
    """How the base model answers evaluation queries; the defaults are the original's inference settings
    (AutoModel.generate: 512 new tokens, temperature 0.7, top-p 0.95; seeded here)."""

    fmt: str = "raw"
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class System:
    """A way of prompting the base model: a system prompt and an example retriever (or none)."""

    name: str
    system_prompt: str
    retrieve: Callable[[str], tuple[Example, ...]] | None = None


def _judge(judge: LLM, tpl: Template, pairs, aspects, cat, stats, jcfg: JudgeConfig):
    out: list[dict[str, int] | None] = [None] * len(pairs)
    todo = list(range(len(pairs)))
    for attempt in range(jcfg.retries + 1):
        if not todo:
            break
        if attempt:
            stats["eval_retry"] += len(todo)
        answers = judge_ask(judge, [tpl.render(query=q, response=r) for q, r in (pairs[i] for i in todo)],
                            [score_prefix(aspects[0])] * len(todo), jcfg, attempt)
        left = []
        for i, a in zip(todo, answers):
            ev = parse_scores(a.text, aspects, cat, stats, na_score=5)
            if ev is None:
                left.append(i)
            else:
                out[i] = {s.aspect: s.score for s in ev.scores}
        todo = left
    stats["eval_unparsed"] += len(todo)
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 3) if xs else None


def evaluate_system(base: LLM, judge: LLM, system: System, regular: Sequence[str], harmful: Sequence[str], *,
                    cat: Catalogue | None = None, stats: Counter | None = None, cfg: EvalConfig = EvalConfig(),
                    judge_cfg: JudgeConfig = JudgeConfig()) -> dict:
    cat = cat or Catalogue.load()
    stats = Counter() if stats is None else stats
    queries = list(regular) + list(harmful)
    exs = [tuple(system.retrieve(q)) if system.retrieve else () for q in queries]
    prompts = [base_prompt(system.system_prompt, e, q, cfg.fmt) for q, e in zip(queries, exs)]
    outs = base.generate(prompts, max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                         seed=cfg.seed, stop=list(STOP))
    resp = [o.text.strip() for o in outs]
    nr = len(regular)
    multi = _judge(judge, load_template("eval_multi"), list(zip(regular, resp[:nr])), MULTI_ASPECTS, cat, stats,
                   judge_cfg)
    safe = _judge(judge, load_template("eval_safety"), list(zip(harmful, resp[nr:])), ("safety",), cat, stats,
                  judge_cfg)
    items = []
    for i, q in enumerate(queries):
        sc = multi[i] if i < nr else safe[i - nr]
        items.append({"query": q, "subset": "regular" if i < nr else "harmful", "response": resp[i],
                      "examples": [e.query for e in exs[i]], "scores": sc})
    means = {a: _mean([m.get(a) if m else None for m in multi]) for a in MULTI_ASPECTS}
    scored = {a: sum(1 for m in multi if m and a in m) for a in MULTI_ASPECTS}  # judgements that gave this aspect
    reg_avg = _mean([_mean(list(m.values())) for m in multi if m])
    return {"system": system.name, "system_prompt": system.system_prompt, "means": means, "scored": scored,
            "regular_avg": reg_avg,
            "safety": _mean([s.get("safety") if s else None for s in safe]),
            "unparsed": sum(m is None for m in multi) + sum(s is None for s in safe),
            "n_regular": nr, "n_harmful": len(harmful), "items": items}


def compare(base: LLM, judge: LLM, systems: Sequence[System], regular: Sequence[str], harmful: Sequence[str],
            **kw) -> dict:
    stats = kw.pop("stats", None) or Counter()
    res = [evaluate_system(base, judge, s, regular, harmful, stats=stats, **kw) for s in systems]
    return {"systems": res, "judge_stats": dict(stats)}


def markdown_table(report: dict) -> str:
    cols = list(MULTI_ASPECTS) + ["avg", "safety", "unparsed"]
    lines = ["| system | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    fmt = lambda v: "n/a" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    for r in report["systems"]:
        vals = [r["means"][a] for a in MULTI_ASPECTS] + [r["regular_avg"], r["safety"], r["unparsed"]]
        lines.append(f"| {r['system']} | " + " | ".join(fmt(v) for v in vals) + " |")
    return "\n".join(lines)


def save_report(report: dict, json_path: str, md_path: str | None = None) -> None:
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    if md_path:
        with open(md_path, "w") as f:
            f.write(markdown_table(report) + "\n")
