"""WUB (Webpage Understanding Benchmark) scoring, exactly as MBZUAI-LLM/web2code webpage_understanding/evaluate.py:
normalise = remove '</s>', strip, upper-case; a prediction is correct if it equals the answer or the answer occurs
in its first five characters; accuracy = 100 * correct / total.

Decoding is the caller's choice: greedy by default in jaxlm; the original samples at temperature 0.2 and asks
once more when the answer is not yes/no (`needs_retry`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable

from jaxlm.errors import DataError

__all__ = ["normalize", "is_correct", "needs_retry", "WUBReport", "score_wub", "score_wub_jsonl",
           "ORIGINAL_TEMPERATURE", "ORIGINAL_MAX_NEW_TOKENS", "ORIGINAL_ATTEMPTS", "answer_wub"]

ORIGINAL_TEMPERATURE = 0.2  # code_eval.py: sampling
ORIGINAL_MAX_NEW_TOKENS = 512
ORIGINAL_ATTEMPTS = 2  # ask once more if the answer is not yes/no


def normalize(text: str) -> str:
    return text.replace("</s>", "").strip().upper()


def is_correct(pred: str, actual: str) -> bool:
    p, a = normalize(pred), normalize(actual)
    return p == a or a in p[:5]


def needs_retry(pred: str) -> bool:
    """The original re-asks when the normalised output is neither YES nor NO."""
    return normalize(pred) not in ("YES", "NO")


@dataclass
class WUBReport:
    accuracy: float  # percent
    correct: int
    total: int
    empty_answers: int = 0  # rows whose reference answer is empty: the original counts them correct ('' in s)
    per_question: dict = field(default_factory=dict)  # question_id -> bool

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total,
                "empty_answers": self.empty_answers}


def score_wub(rows: Iterable[dict], pred_key: str = "pred", actual_key: str = "actual") -> WUBReport:
    """Rows as the original results.jsonl ({q_id, image, pred, actual}); other key names via pred_key/actual_key."""
    correct = total = empty = 0
    per = {}
    for i, row in enumerate(rows):
        for k in (pred_key, actual_key):
            if not isinstance(row.get(k), str):
                raise DataError(f"row {i}: '{k}' must be a string (got {type(row.get(k)).__name__})")
        ok = is_correct(row[pred_key], row[actual_key])
        empty += normalize(row[actual_key]) == ""
        correct += ok
        total += 1
        per[row.get("q_id", row.get("question_id", i))] = ok
    return WUBReport(100.0 * correct / total if total else 0.0, correct, total, empty, per)


def score_wub_jsonl(path, **kw) -> WUBReport:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
    return score_wub(rows, **kw)


def answer_wub(ask, rows: Iterable[dict], *, attempts: int = ORIGINAL_ATTEMPTS) -> tuple[list[dict], dict]:
    """Run a model over WUB rows the way code_eval.py does: ask(image, question) -> text; if the answer is not
    yes/no, ask again, up to `attempts` times (the last answer is kept). Returns (results rows {q_id, image, pred,
    actual} as the original's results.jsonl, counts {asked, retries, not_yes_no}). Pass a sampling `ask` at
    ORIGINAL_TEMPERATURE to reproduce the original; greedy is deterministic (and then a retry repeats itself)."""
    if attempts < 1:
        raise DataError(f"attempts={attempts}: expected >= 1")
    out, counts = [], {"asked": 0, "retries": 0, "not_yes_no": 0}
    for i, row in enumerate(rows):
        for k in ("image", "question_id", "Q", "A"):
            if k not in row:
                raise DataError(f"row {i}: missing key {k!r} (a WUB row has image, question_id, Q, A)")
        pred = ""
        for a in range(attempts):
            pred = ask(row["image"], row["Q"])
            if not isinstance(pred, str):
                raise DataError(f"row {i} ({row['question_id']}): ask() returned {type(pred).__name__}, not str")
            counts["asked"] += 1
            if not needs_retry(pred):
                break
            if a + 1 < attempts:
                counts["retries"] += 1
        counts["not_yes_no"] += needs_retry(pred)
        out.append({"q_id": row["question_id"], "image": row["image"], "pred": pred, "actual": row["A"]})
    return out, counts
