"""WCGB (Webpage Code Generation Benchmark): an OpenAI-compatible vision judge scores a rendered prediction
against the ground-truth screenshot on 10 criteria (0-10), aggregated as MBZUAI-LLM/web2code
code_generation/gpt4_vision_evaluation.py does:

    VSA = mean(c1..c4)  visual structure and alignment      CAD = mean(c5, c6)  colour and aesthetic design
    TCC = mean(c7..c9)  textual and content consistency     UII = c10           user interface and interactivity
    each a mean over the images whose answer parsed; Overall = (VSA + CAD + TCC + UII) / 4

Unlike the original, answers that do not parse into exactly 10 integers and predictions that failed to render are
REPORTED (counts and reasons per image), not silently dropped; `coverage` is the scored fraction. The rubric below
is written in our own words with the original's criteria, scale and anchors.

The judge is any jaxlm.align.llm backend: Metered(Cached(HTTPLLM(url, "gpt-4-turbo"), cache), "judge", ledger)
gives the project's cache, retries and cost ledger."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Sequence

from jaxlm.errors import DataError

__all__ = ["CRITERIA", "GROUPS", "SYSTEM_PROMPT", "RUBRIC", "judge_messages", "parse_scores", "WCGBReport",
           "aggregate", "judge_wcgb", "aggregate_jsonl", "run_wcgb", "ORIGINAL_JUDGE_MODEL", "ORIGINAL_MAX_TOKENS"]

ORIGINAL_JUDGE_MODEL = "gpt-4-turbo"
ORIGINAL_MAX_TOKENS = 300

CRITERIA = ("Layout Consistency", "Element Alignment", "Proportional Accuracy", "Visual Harmony",
            "Color Scheme and Aesthetic Match", "Aesthetic Resemblance",
            "Font Characteristics and Consistency", "Textual Content Match", "Numeric and Special Character Accuracy",
            "User Interface Consistency")
GROUPS = {"VSA": (0, 1, 2, 3), "CAD": (4, 5), "TCC": (6, 7, 8), "UII": (9,)}

SYSTEM_PROMPT = ("You are a meticulous visual reviewer of web pages: you read text in images reliably and compare "
                 "layouts, colours and typography element by element.")

RUBRIC = """You will see two screenshots of web pages. The FIRST is the reference; the SECOND was rendered from HTML \
that a model wrote to reproduce the reference. Rate how closely the second matches the first on each criterion \
below, with an integer from 0 to 10 (10: indistinguishable; 5: clearly related but with visible differences; \
0: nothing in common). Give 10 only when the two are the same on that criterion.

Visual structure and alignment
1. Layout Consistency: are the same regions (header, navigation, content, sidebar, footer) in the same places?
2. Element Alignment: are elements aligned and spaced the same way relative to each other?
3. Proportional Accuracy: do elements have the same sizes and aspect ratios?
4. Visual Harmony: is the overall balance and visual weight of the page the same?
Colour and aesthetic design
5. Color Scheme and Aesthetic Match: are backgrounds, text and accent colours the same?
6. Aesthetic Resemblance: do the two pages give the same overall look and style?
Textual and content consistency
7. Font Characteristics and Consistency: same font families, sizes, weights and styles?
8. Textual Content Match: is the same text present, in the same order?
9. Numeric and Special Character Accuracy: are numbers, prices, dates and symbols reproduced exactly?
User interface
10. User Interface Consistency: are buttons, forms, menus and icons the same in kind, look and place?

Answer with exactly 10 integers separated by commas, in the order above, and nothing else. Example: 7,6,8,5,9,7,6,8,9,6"""


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def judge_messages(ref_png: bytes, pred_png: bytes) -> list[dict]:
    """The chat request: system persona; user = rubric, reference image, predicted image (OpenAI vision format)."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "text", "text": RUBRIC},
                                         {"type": "image_url", "image_url": {"url": _data_url(ref_png)}},
                                         {"type": "image_url", "image_url": {"url": _data_url(pred_png)}}]}]


def parse_scores(text: str) -> tuple[list[int] | None, str | None]:
    """The original's parse: newlines become commas, strip ', ', split on commas, int() every item; exactly 10
    values. Returns (scores, None) or (None, reason). Values outside 0..10 are also refused (the original kept
    them)."""
    if not isinstance(text, str):
        return None, f"not text ({type(text).__name__})"
    items = text.replace("\n", ",").strip(", ").split(",")
    try:
        vals = [int(x) for x in items]
    except ValueError:
        bad = next(x for x in items if not _is_int(x))
        return None, f"not an integer list (item {bad.strip()[:30]!r})"
    if len(vals) != 10:
        return None, f"{len(vals)} numbers, expected 10"
    if any(v < 0 or v > 10 for v in vals):
        return None, f"a score outside 0..10 ({vals})"
    return vals, None


def _is_int(x: str) -> bool:
    try:
        int(x)
        return True
    except ValueError:
        return False


@dataclass
class WCGBReport:
    VSA: float | None
    CAD: float | None
    TCC: float | None
    UII: float | None
    Overall: float | None
    scored: int
    total: int
    parse_failures: dict = field(default_factory=dict)  # image id -> reason
    render_failures: dict = field(default_factory=dict)  # image id -> reason
    per_image: dict = field(default_factory=dict)  # image id -> 10 scores
    answers: dict = field(default_factory=dict, repr=False)  # image id -> the judge's raw answer (judge_wcgb)

    @property
    def coverage(self) -> float:
        return self.scored / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {"VSA": self.VSA, "CAD": self.CAD, "TCC": self.TCC, "UII": self.UII, "Overall": self.Overall,
                "scored": self.scored, "total": self.total, "coverage": self.coverage,
                "parse_failures": len(self.parse_failures), "render_failures": len(self.render_failures)}


def aggregate(per_image: dict, total: int | None = None, parse_failures=None, render_failures=None) -> WCGBReport:
    """Group means per image, then the mean over images, then Overall = mean of the four groups (the original)."""
    n = len(per_image)
    sums = {g: 0.0 for g in GROUPS}
    for img, s in per_image.items():
        if len(s) != 10:
            raise DataError(f"per_image[{img!r}]: {len(s)} scores, expected 10")
        for g, idx in GROUPS.items():
            sums[g] += sum(s[i] for i in idx) / len(idx)
    means = {g: (sums[g] / n if n else None) for g in GROUPS}
    overall = sum(means.values()) / 4 if n else None
    pf, rf = dict(parse_failures or {}), dict(render_failures or {})
    return WCGBReport(means["VSA"], means["CAD"], means["TCC"], means["UII"], overall, n,
                      total if total is not None else n + len(pf) + len(rf), pf, rf, dict(per_image))


def judge_wcgb(judge, items: Sequence[tuple], *, max_tokens: int = ORIGINAL_MAX_TOKENS, temperature: float = 0.0,
               seed: int | None = 0) -> WCGBReport:
    """items: (image_id, reference PNG bytes, prediction) where prediction is PNG bytes or a
    jaxlm.web.render.RenderResult (a failed render is a counted render failure and is not sent to the judge).
    The judge call goes through `judge.generate` (wrap it in Cached/Metered for the cache and the ledger)."""
    ids, prompts, render_fail = [], [], {}
    seen = set()
    for item in items:
        if len(item) != 3:
            raise DataError(f"judge_wcgb: items must be (image_id, reference_png, prediction); got {len(item)} fields")
        img, ref, pred = item
        if img in seen:
            raise DataError(f"judge_wcgb: image id {img!r} appears twice")
        seen.add(img)
        if hasattr(pred, "ok"):  # a RenderResult
            if not pred.ok:
                render_fail[img] = pred.error or "render failed"
                continue
            pred = pred.png
        if not isinstance(ref, (bytes, bytearray)) or not isinstance(pred, (bytes, bytearray)):
            raise DataError(f"judge_wcgb: {img!r}: the reference and the prediction must be PNG bytes")
        ids.append(img)
        prompts.append(judge_messages(bytes(ref), bytes(pred)))
    outs = judge.generate(prompts, max_tokens=max_tokens, temperature=temperature, seed=seed) if prompts else []
    per, parse_fail = {}, {}
    for img, c in zip(ids, outs):
        s, why = parse_scores(c.text)
        if s is None:
            parse_fail[img] = f"{why}: {c.text[:80]!r}"
        else:
            per[img] = s
    rep = aggregate(per, len(seen), parse_fail, render_fail)
    rep.answers = {img: c.text for img, c in zip(ids, outs)}
    return rep


def aggregate_jsonl(path) -> WCGBReport:
    """Aggregate a judge-output JSONL in the original's format (one {"image_id", "output"} per line), reporting
    the rows the original would drop."""
    import os

    from jaxlm.data.jsonl import parse_jsonl

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    per, fails = {}, {}
    with open(path, encoding="utf-8") as f:
        for n, row in parse_jsonl(f, path):
            img = row.get("image_id", f"line{n}")
            s, why = parse_scores(row.get("output"))
            if s is None:
                fails[img] = why
            else:
                per[img] = s
    return aggregate(per, len(per) + len(fails), fails)


def run_wcgb(renderer, predictions: dict, references: dict, judge, *, options=None, out_jsonl=None,
             **judge_kw) -> WCGBReport:
    """Render predicted HTML (image id -> html) and judge it against reference screenshots (image id -> PNG bytes).
    With `out_jsonl`, the judge's raw answers are appended as {"image_id", "output"} (the original's file) and ids
    already in the file are not asked again (resume); the report covers every id. A prediction missing for a
    reference is a render failure ("no prediction"), never a silent drop."""
    import json
    import os

    done: dict = {}
    if out_jsonl is not None and os.path.exists(out_jsonl):
        with open(out_jsonl, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    done[row["image_id"]] = row["output"]
    items, render_fail = [], {}
    for img, ref in references.items():
        if img in done:
            continue
        if img not in predictions:
            render_fail[img] = "no prediction"
            continue
        res = renderer.render(predictions[img], options)
        items.append((img, ref, res))
    extra = set(predictions) - set(references)
    if extra:
        raise DataError(f"run_wcgb: predictions for ids with no reference: {sorted(extra)[:5]}")
    new = judge_wcgb(judge, items, **judge_kw) if items else aggregate({}, 0)
    answers = new.answers
    if out_jsonl is not None and answers:
        d = os.path.dirname(os.fspath(out_jsonl))
        if d:
            os.makedirs(d, exist_ok=True)
        with open(out_jsonl, "a", encoding="utf-8") as f:
            for img, text in answers.items():
                f.write(json.dumps({"image_id": img, "output": text}) + "\n")
    per, pf = dict(new.per_image), dict(new.parse_failures)
    for img, text in done.items():
        s, why = parse_scores(text)
        if s is None:
            pf[img] = why
        else:
            per[img] = s
    rf = {**new.render_failures, **render_fail}
    return aggregate(per, len(references), pf, rf)
