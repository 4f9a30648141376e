"""Dynamic rewarding: per query a judge picks the relevant aspects, then scores a response 1-5 on each; the reward is
the mean. Judges are weak and answer in broken JSON, so parsing is lenient and every problem is counted in a
`collections.Counter` (`stats`) instead of raising:

  json_repaired     JSON that needed repair (fences, trailing commas, quotes, bare keys)
  json_truncated    JSON cut off before its end (the token limit): refused, never closed up; the call is retried
  regex_repaired    scores/aspects recovered from text that was not JSON at all
  json_failed       answers that yielded nothing usable (the call is retried, then skipped)
  unknown_aspect    aspect names outside the catalogue (dropped)
  unexpected_aspect scored aspects that were not selected (ignored)
  missing_aspect    selected aspects the judge did not score
  bad_score         scores that were not a number 1-5 (clamped when numeric, else dropped)
  not_applicable    'N/A' scores (dropped in rewards; 5 in evaluation, as just-eval does)
  selection_retry / score_retry, selection_fallback (default aspects used), score_failed (reward 0)
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from jaxlm.align.llm import LLM, ask
from jaxlm.align.prompts import Template, load_data, load_template
from jaxlm.align.state import AspectScore, AspectSelection, Evaluation


# ---------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Catalogue:
    """The aspects: `rubrics` (scoring, anchored at 5 and at 1), `descriptions` (the short text the aspect
    selector reads), aliases (other spellings -> canonical name) and the fallback selection."""

    rubrics: dict[str, str]
    aliases: dict[str, str]
    default: tuple[str, ...]
    version: int = 1
    descriptions: dict[str, str] | None = None

    @classmethod
    def load(cls, data_dir=None) -> "Catalogue":
        d = load_data("aspects", data_dir)
        return cls(dict(d["aspects"]), dict(d.get("aliases", {})), tuple(d["default_selection"]), d["version"],
                   dict(d.get("descriptions") or d["aspects"]))

    def canonical(self, name: Any) -> str | None:
        if not isinstance(name, str):
            return None
        key = re.sub(r"[\s_\-]+", " ", name.strip().strip("*\"'`.:").lower()).strip()
        if key in self.rubrics:
            return key
        key = self.aliases.get(key, self.aliases.get(key.replace(" ", "-"), key))
        return key if key in self.rubrics else None

    @staticmethod
    def display(name: str) -> str:
        return name.title()

    def listing(self) -> str:
        """The catalogue as the aspect selector sees it: names with their short descriptions."""
        desc = self.descriptions or self.rubrics
        return "\n".join(f"- {self.display(k)}: {desc[k]}" for k in self.rubrics)


# ---------------------------------------------------------------- lenient JSON


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def is_truncated(text: str) -> bool:
    """True when the first JSON object of `text` never closes: its opening brace is still open (or a string still
    unterminated) at the end of the text, which is what an answer cut by the token limit looks like."""
    if not isinstance(text, str):
        return False
    start = text.find("{")
    if start == -1:
        return False
    depth, in_str, esc = 0, False, False
    for ch in text[start:]:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return False
    return True


def parse_json(text: str) -> tuple[Any | None, str]:
    """Parse a JSON object out of an LLM answer. Returns (object or None, 'ok' | 'repaired' | 'truncated' |
    'failed'). Syntax slips (fences, trailing commas, single quotes, bare keys) are repaired; an object cut off
    before its end is refused ('truncated'), never closed up: the caller retries."""
    if not isinstance(text, str) or not text.strip():
        return None, "failed"
    t = text.strip()
    try:
        obj = json.loads(t)
        if isinstance(obj, dict):
            return obj, "ok"
    except ValueError:
        pass
    if is_truncated(t):
        return None, "truncated"
    ident = lambda s: s  # noqa: E731
    attempts = [(m.group(1), f) for m in _FENCE.finditer(t) for f in (ident, _repair_syntax)]
    start = t.find("{")
    if start != -1:
        end = t.rfind("}")
        if end > start:
            attempts += [(t[start:end + 1], ident), (t[start:end + 1], _repair_syntax)]
    for cand, fix in attempts:
        try:
            obj = json.loads(fix(cand))
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj, "repaired"
    return None, "failed"


def _repair_syntax(s: str) -> str:
    s = s.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    s = re.sub(r",\s*([}\]])", r"\1", s)  # trailing commas
    s = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", s)))
    if '"' not in s and "'" in s:
        s = s.replace("'", '"')
    s = re.sub(r"([{,]\s*)([A-Za-z_][\w \-]*?)\s*:", lambda m: f'{m.group(1)}"{m.group(2)}":', s)  # bare keys
    s = re.sub(r'"\s*\n\s*"', '", "', s)  # missing commas between string items on separate lines
    return s


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def extract_field(text: str, key: str, stats: Counter, *, min_len: int = 1,
                  placeholders: Sequence[str] = ()) -> str | None:
    """A string field of a JSON answer (e.g. 'new_response'); failing JSON, the text after a `key` label.
    None (counted as '<key>_failed') when neither gives at least `min_len` characters, or when the model only copied
    one of the template's `placeholders` (counted as 'placeholder_copied'; small models do)."""
    found = None
    obj, status = parse_json(text)
    if status == "truncated":
        stats["json_truncated"] += 1
        stats[f"{key}_failed"] += 1
        return None
    if obj is not None:
        if status == "repaired":
            stats["json_repaired"] += 1
        v = obj.get(key)
        if isinstance(v, str) and len(v.strip()) >= min_len:
            found = v.strip()
    if found is None and isinstance(text, str) and key in text:
        tail = text.split(key, 1)[1].lstrip("\"': ").rstrip("}\"' \n").strip()
        if len(tail) >= min_len:
            stats["regex_repaired"] += 1
            found = tail
    if found is not None and any(_norm(found) == _norm(p) for p in placeholders):
        stats["placeholder_copied"] += 1
        found = None
    if found is None:
        stats[f"{key}_failed"] += 1
    return found


def _find_key(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            r = _find_key(v, key)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = _find_key(v, key)
            if r is not None:
                return r
    return None


def parse_score(value: Any, stats: Counter) -> int | None:
    """1-5 from an int, a float, '4', '4/5', '4 out of 5', {'score': 4}; None for N/A or garbage (counted)."""
    if isinstance(value, dict):
        value = value.get("score", value.get("Score"))
    if isinstance(value, bool) or value is None:
        stats["bad_score"] += 1
        return None
    if isinstance(value, str):
        v = value.strip()
        if v.upper() in ("N/A", "NA", "NONE", "NOT APPLICABLE"):
            stats["not_applicable"] += 1
            return None
        m = re.match(r"^\s*(-?\d+(?:\.\d+)?)", v)
        if not m:
            stats["bad_score"] += 1
            return None
        value = float(m.group(1))
    if not isinstance(value, (int, float)):
        stats["bad_score"] += 1
        return None
    s = int(math.floor(float(value) + 0.5))  # half up (round() would send 2.5 to 2 but 3.5 to 4)
    if s < 1 or s > 5:
        stats["bad_score"] += 1
        s = min(5, max(1, s))
    return s


# ---------------------------------------------------------------- aspect selection


def parse_selection(text: str, cat: Catalogue, lo: int, hi: int, stats: Counter) -> AspectSelection | None:
    """The judge's chosen aspects (canonical, deduplicated, at most `hi`); None when fewer than `lo` usable ones."""
    obj, status = parse_json(text)
    reasoning = ""
    names: list[Any] = []
    if status == "truncated":
        stats["json_truncated"] += 1
        return None
    if obj is not None:
        if status == "repaired":
            stats["json_repaired"] += 1
        sel = _find_key(obj, "selected_aspects")
        if isinstance(sel, str):
            sel = re.split(r"[,;\n]", sel)
        names = list(sel) if isinstance(sel, (list, tuple)) else []
        r = _find_key(obj, "reasoning")
        reasoning = r if isinstance(r, str) else ""
    if not names:
        # no JSON list: take catalogue names mentioned in the text, in order of appearance
        low = text.lower() if isinstance(text, str) else ""
        hits = []
        for name in cat.rubrics:
            m = re.search(r"\b" + re.escape(name).replace(r"\ ", r"[\s_\-]") + r"\b", low)
            if m:
                hits.append((m.start(), name))
        names = [n for _, n in sorted(hits)]
        if len(names) >= lo:
            stats["regex_repaired"] += 1
        else:
            stats["json_failed"] += 1
            return None
    chosen: list[str] = []
    for n in names:
        c = cat.canonical(n)
        if c is None:
            stats["unknown_aspect"] += 1
        elif c not in chosen:
            chosen.append(c)
    if len(chosen) > hi:
        stats["too_many_aspects"] += 1
        chosen = chosen[:hi]
    if len(chosen) < lo:
        stats["too_few_aspects"] += 1
        return None
    return AspectSelection(tuple(chosen), reasoning)


class AspectCache:
    """Per-query aspect selections, persisted as a JSON file (rewritten atomically on each new entry)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else str(path)
        self._lock = threading.Lock()
        self._data: dict[str, AspectSelection] = {}
        if self.path and os.path.exists(self.path):
            with open(self.path) as f:
                raw = json.load(f)
            self._data = {q: AspectSelection(tuple(v["aspects"]), v.get("reasoning", ""), v.get("fallback", False))
                          for q, v in raw.items()}

    def get(self, query: str) -> AspectSelection | None:
        return self._data.get(query)

    def put(self, query: str, sel: AspectSelection) -> None:
        with self._lock:
            self._data[query] = sel
            if self.path:
                d = os.path.dirname(self.path)
                if d:
                    os.makedirs(d, exist_ok=True)
                tmp = self.path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump({q: {"aspects": list(s.aspects), "reasoning": s.reasoning, "fallback": s.fallback}
                               for q, s in self._data.items()}, f, indent=1, ensure_ascii=False)
                os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge is called: token budget, sampling, retries (retries sample at `retry_temperature`)."""

    max_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    retries: int = 2
    retry_temperature: float = 0.7
    min_aspects: int = 2
    max_aspects: int = 5
    prefill: bool = False  # start the judge's answer with the JSON opening (local backends; helps small models)
    selection_max_tokens: int | None = None  # default max_tokens (a prefilled selection needs only a few dozen)


SELECTION_PREFIX = '{"aspects_selection": {"selected_aspects": ["'


def score_prefix(aspect: str, key: str = "score") -> str:
    return '{"' + aspect + '": {"' + key + '": '


def judge_ask(judge: LLM, prompts: list[str], prefixes: list[str], cfg: JudgeConfig, attempt: int, *,
              stop: Sequence[str] = ("}}",), close: str = "}}", max_tokens: int | None = None):
    """One judge round: greedy first, retries sample at `retry_temperature` with a new seed. `stop` and `close`
    (what is appended to an answer the stop string ended) apply to prefilled answers only."""
    temp = cfg.temperature if attempt == 0 else max(cfg.temperature, cfg.retry_temperature)
    return ask(judge, prompts, prefixes, prefill=cfg.prefill, prefill_stop=stop, prefill_close=close,
               max_tokens=max_tokens or cfg.max_tokens, temperature=temp, top_p=cfg.top_p, seed=cfg.seed + attempt)


def select_aspects(judge: LLM, queries: Sequence[str], *, cat: Catalogue, cache: AspectCache | None = None,
                   stats: Counter | None = None, cfg: JudgeConfig = JudgeConfig(),
                   template: Template | None = None) -> list[AspectSelection]:
    """Aspects for each query: from the cache, else asked of the judge (retried; default aspects as a last resort)."""
    stats = Counter() if stats is None else stats
    tpl = template or load_template("aspect_selector")
    out: dict[str, AspectSelection] = {}
    todo = []
    # selections made under another aspect-count range (stage 1 asks for 3-6) are cached apart
    key = (lambda q: q) if (cfg.min_aspects, cfg.max_aspects) == (2, 5) else (
        lambda q: f"[{cfg.min_aspects}-{cfg.max_aspects} aspects] {q}")
    for q in dict.fromkeys(queries):
        hit = cache.get(key(q)) if cache is not None else None
        if hit is not None:
            out[q] = hit
            stats["selection_cache_hit"] += 1
        else:
            todo.append(q)
    for attempt in range(cfg.retries + 1):
        if not todo:
            break
        if attempt:
            stats["selection_retry"] += len(todo)
        prompts = [tpl.render(query=q, aspect_list=cat.listing(), min_aspects=cfg.min_aspects,
                              max_aspects=cfg.max_aspects) for q in todo]
        answers = judge_ask(judge, prompts, [SELECTION_PREFIX] * len(prompts), cfg, attempt, stop=("]",), close="]}}",
                            max_tokens=cfg.selection_max_tokens)
        left = []
        for q, a in zip(todo, answers):
            sel = parse_selection(a.text, cat, cfg.min_aspects, cfg.max_aspects, stats)
            if sel is None:
                left.append(q)
            else:
                out[q] = sel
                if cache is not None:
                    cache.put(key(q), sel)
        todo = left
    for q in todo:
        stats["selection_fallback"] += 1
        out[q] = AspectSelection(cat.default, "default aspects (the judge's selection could not be parsed)", True)
        if cache is not None:
            cache.put(key(q), out[q])
    return [out[q] for q in queries]


# ---------------------------------------------------------------- scoring


def json_template(aspects: Sequence[str], cat: Catalogue, rationale_key: str = "rationale") -> str:
    """The answer shape the judge fills in: one entry per selected aspect with placeholders in [] (as the
    original's evaluation template)."""
    return json.dumps({cat.display(a): {rationale_key: f"[your reasoning about the {a} of the answer]",
                                        "score": f"[your {a} score]"} for a in aspects}, indent=4)


def parse_scores(text: str, aspects: Sequence[str], cat: Catalogue, stats: Counter, *,
                 na_score: int | None = None) -> Evaluation | None:
    """Scores for the selected `aspects`. None when none could be read (caller retries). `na_score` replaces N/A."""
    obj, status = parse_json(text)
    found: dict[str, AspectScore] = {}
    if status == "truncated":
        stats["json_truncated"] += 1
        return None
    if obj is not None:
        if status == "repaired":
            stats["json_repaired"] += 1
        items = obj.items()
        if len(obj) == 1 and isinstance(next(iter(obj.values())), dict) and cat.canonical(next(iter(obj))) is None:
            inner = next(iter(obj.values()))  # {"evaluation": {...}} wrapper
            if any(cat.canonical(k) for k in inner):
                items = inner.items()
        for k, v in items:
            c = cat.canonical(k)
            if c is None:
                stats["unknown_aspect"] += 1
                continue
            if c not in aspects:
                stats["unexpected_aspect"] += 1
                continue
            raw = v.get("score", v.get("Score")) if isinstance(v, dict) else v
            s = parse_score(raw, stats)
            if s is None and na_score is not None and isinstance(raw, str) and raw.strip().upper() in ("N/A", "NA"):
                s = na_score
            if s is None:
                continue
            why = ""
            if isinstance(v, dict):
                why = v.get("rationale", v.get("reason", v.get("explanation", "")))
                why = why if isinstance(why, str) else json.dumps(why)
            found[c] = AspectScore(c, s, why)
    else:
        # not JSON: look for "<aspect> ... <digit>" near each aspect name
        low = text.lower() if isinstance(text, str) else ""
        for a in aspects:
            pat = re.escape(a).replace(r"\ ", r"[\s_\-]")
            m = re.search(pat + r"[^0-9\n]{0,40}?(?:score[^0-9\n]{0,10})?\b([1-5])(?:\s*/\s*5)?\b", low)
            if m:
                found[a] = AspectScore(a, int(m.group(1)), "")
        if found:
            stats["regex_repaired"] += 1
    if not found:
        stats["json_failed"] += 1
        return None
    missing = [a for a in aspects if a not in found]
    stats["missing_aspect"] += len(missing)
    return Evaluation(tuple(found[a] for a in aspects if a in found))


def score_responses(judge: LLM, items: Sequence[tuple[str, str, AspectSelection]], *, cat: Catalogue,
                    stats: Counter | None = None, cfg: JudgeConfig = JudgeConfig(),
                    template: Template | None = None) -> list[Evaluation]:
    """Score each (query, response, selection). Unparseable judgements are retried; then an empty Evaluation
    (reward 0), as in the original, counted as 'score_failed'. Never raises on bad judge output."""
    stats = Counter() if stats is None else stats
    tpl = template or load_template("scorer")
    results: list[Evaluation | None] = [None] * len(items)
    todo = list(range(len(items)))
    for attempt in range(cfg.retries + 1):
        if not todo:
            break
        if attempt:
            stats["score_retry"] += len(todo)
        prompts = []
        for i in todo:
            q, r, sel = items[i]
            prompts.append(tpl.render(
                query=q, response=r, reasoning=sel.reasoning or "(none given)",
                rubrics="\n".join(f"- {cat.display(a)}: {cat.rubrics[a]}" for a in sel.aspects),
                json_template=json_template(sel.aspects, cat)))
        answers = judge_ask(judge, prompts, [score_prefix(cat.display(items[i][2].aspects[0])) for i in todo], cfg,
                            attempt)
        left = []
        for i, a in zip(todo, answers):
            ev = parse_scores(a.text, items[i][2].aspects, cat, stats)
            if ev is None:
                left.append(i)
            else:
                results[i] = ev
        todo = left
    for i in todo:
        stats["score_failed"] += 1
        results[i] = Evaluation(())
    return results  # type: ignore[return-value]


def evaluation_json(ev: Evaluation) -> str:
    """An evaluation as the optimizer and the rewriter read it: the judge's JSON, one entry per aspect with its
    rationale and score, indented (the original passes json.dumps(eval_dict, indent=4))."""
    if not ev.ok:
        return "(no usable evaluation)"
    return json.dumps({Catalogue.display(s.aspect): {"rationale": s.rationale, "score": s.score} for s in ev.scores},
                      indent=4, ensure_ascii=False)


def dynamic_reward(judge: LLM, pairs: Sequence[tuple[str, str]], *, cat: Catalogue, cache: AspectCache | None = None,
                   stats: Counter | None = None, cfg: JudgeConfig = JudgeConfig(), selector: LLM | None = None,
                   templates: dict[str, Template] | None = None) -> list[Evaluation]:
    """Reward (query, response) pairs: select aspects per query (cached), then score. `selector` defaults to `judge`."""
    t = templates or {}
    sels = select_aspects(selector or judge, [q for q, _ in pairs], cat=cat, cache=cache, stats=stats, cfg=cfg,
                          template=t.get("aspect_selector"))
    return score_responses(judge, [(q, r, s) for (q, r), s in zip(pairs, sels)], cat=cat, stats=stats, cfg=cfg,
                           template=t.get("scorer"))
