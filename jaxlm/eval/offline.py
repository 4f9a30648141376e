"""The offline evaluation tasks shipped with jaxlm (lm-evaluation-harness YAML in jaxlm/eval/tasks/), and the
builder of their data from the embedded held-out corpus.

    jaxlm_heldout_lm_language / jaxlm_heldout_lm_code   loglikelihood_rolling over held-out documents
                                                        (word/byte perplexity, bits per byte); tag jaxlm_heldout_lm
    jaxlm_heldout_cloze      multiple choice: a held-out passage's true continuation against 3 continuations taken
                             from other held-out documents (acc, acc_norm); prose and code items
    jaxlm_code_exec          HumanEval-format problems, sampled completions executed in a sandbox (pass@1, pass@k)

The data files (jaxlm/eval/tasks/data/*.jsonl) are package data, built once by `python -m jaxlm.eval.offline`
from the embedded corpus' held-out split (documents never trained on; see jaxlm.data.corpus), so they stay fixed
whatever Python is installed. A task reads another file with --metadata '{"data_file": "/path/file.jsonl"}'
(the code task: any HumanEval-format file).
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DATA_DIR = TASKS_DIR / "data"
TASKS = ("jaxlm_heldout_lm_language", "jaxlm_heldout_lm_code", "jaxlm_heldout_cloze", "jaxlm_code_exec")


def only_jaxlm_tasks(tasks) -> bool:
    """Whether every requested task (names, comma-separated or a list) is one of jaxlm's (named jaxlm_*)."""
    names = tasks.split(",") if isinstance(tasks, str) else [t for x in tasks for t in str(x).split(",")]
    return bool(names) and all(t.strip().startswith("jaxlm_") for t in names if t.strip())


def task_manager(extra_paths=None, metadata: dict | None = None, tasks=None):
    """An lm_eval TaskManager that knows jaxlm's tasks (and `extra_paths`, folders of the user's YAML tasks);
    `metadata` reaches every task's loader (e.g. {"data_file": PATH}). Given `tasks` that are all jaxlm's, the
    harness' ~10k built-in task files are not indexed (that takes ~20 s on a small CPU)."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + [str(p) for p in (extra_paths or [])]
    defaults = not (tasks is not None and not extra_paths and only_jaxlm_tasks(tasks))
    return TaskManager(include_path=paths if len(paths) > 1 else paths[0], metadata=metadata,
                       include_defaults=defaults)


def _lm_docs(source: str, n: int, max_chars: int) -> list[dict]:
    from jaxlm.data.corpus import embedded_documents

    docs = [d for d in embedded_documents(f"{source}:heldout") if len(d) > 400]
    return [{"source": source, "text": d[:max_chars].rsplit("\n", 1)[0] + "\n"} for d in docs[:n]]


def _cloze_items(source: str, n: int, rng: random.Random) -> list[dict]:
    """Passage -> its next piece (a few words of prose / the next non-empty line of code), 3 distractor pieces
    from other documents. Continuations keep their leading whitespace (target_delimiter is empty)."""
    from jaxlm.data.corpus import embedded_documents

    docs = [d for d in embedded_documents(f"{source}:heldout") if len(d) > 600]
    cands = []
    for di, d in enumerate(docs):
        if source == "language":
            words = list(re.finditer(r"\S+", d[200:600]))
            if len(words) < 20:
                continue
            a = words[len(words) // 2]
            b = words[min(len(words) // 2 + 5, len(words) - 1)]
            ctx, cont = d[:200 + a.start()], d[200 + a.start():200 + b.end()]
        else:
            lines = d.split("\n")
            idx = [i for i in range(8, len(lines)) if len(lines[i].strip()) >= 12]
            for q in range(1, 5):  # four places in each (long) module
                if idx:
                    i = idx[len(idx) * q // 5]
                    cands.append((di, ("\n".join(lines[:i]) + "\n")[-600:], lines[i]))
            continue
        cands.append((di, ctx[-600:], " " + cont.lstrip()))
    items = []
    for j, (di, ctx, cont) in enumerate(cands[:n]):
        others = [c for k, (dk, _, c) in enumerate(cands) if dk != di and c != cont]
        wrong = rng.sample(others, 3)
        label = rng.randrange(4)
        choices = wrong[:label] + [cont] + wrong[label:]
        items.append({"source": source, "context": ctx if source == "code" else ctx.rstrip(), "choices": choices,
                      "label": label})
    return items


CODE_PROBLEMS = [  # small HumanEval-format problems (prompt, canonical solution, test)
    ("add", "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n", "    return a + b\n",
     "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n"),
    ("reverse", "def reverse(s):\n    \"\"\"Return the string s reversed.\"\"\"\n", "    return s[::-1]\n",
     "def check(f):\n    assert f('abc') == 'cba'\n    assert f('') == ''\n"),
    ("is_even", "def is_even(n):\n    \"\"\"Return True if n is even.\"\"\"\n", "    return n % 2 == 0\n",
     "def check(f):\n    assert f(4) and not f(3)\n"),
    ("maximum", "def maximum(xs):\n    \"\"\"Return the largest element of the non-empty list xs.\"\"\"\n",
     "    return max(xs)\n", "def check(f):\n    assert f([1, 5, 2]) == 5\n    assert f([-3]) == -3\n"),
    ("factorial", "def factorial(n):\n    \"\"\"Return n! for n >= 0.\"\"\"\n",
     "    r = 1\n    for i in range(2, n + 1):\n        r *= i\n    return r\n",
     "def check(f):\n    assert f(0) == 1\n    assert f(5) == 120\n"),
    ("count_vowels", "def count_vowels(s):\n    \"\"\"Return how many of the characters of s are vowels (aeiou).\"\"\"\n",
     "    return sum(c in 'aeiou' for c in s.lower())\n",
     "def check(f):\n    assert f('hello') == 2\n    assert f('xyz') == 0\n"),
    ("join_words", "def join_words(words):\n    \"\"\"Return the words joined by single spaces.\"\"\"\n",
     "    return ' '.join(words)\n", "def check(f):\n    assert f(['a', 'b']) == 'a b'\n    assert f([]) == ''\n"),
    ("square_list", "def square_list(xs):\n    \"\"\"Return a list of the squares of xs.\"\"\"\n",
     "    return [x * x for x in xs]\n", "def check(f):\n    assert f([1, 2, 3]) == [1, 4, 9]\n"),
]


def code_problems() -> list[dict]:
    return [{"task_id": f"jaxlm/{i}", "prompt": p, "canonical_solution": s, "test": t, "entry_point": name}
            for i, (name, p, s, t) in enumerate(CODE_PROBLEMS)]


def build_task_data(out_dir=DATA_DIR, *, lm_docs: int = 16, lm_chars: int = 1500, cloze: int = 40,
                    seed: int = 0) -> dict:
    """Write the tasks' jsonl files; returns {file: records}."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "heldout_lm_language.jsonl": _lm_docs("language", lm_docs, lm_chars),
        "heldout_lm_code.jsonl": _lm_docs("code", lm_docs, lm_chars),
        "heldout_cloze.jsonl": _cloze_items("language", cloze, rng) + _cloze_items("code", cloze, rng),
        "code_exec.jsonl": code_problems(),
    }
    for name, recs in files.items():
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return {k: len(v) for k, v in files.items()}


if __name__ == "__main__":
    print(build_task_data(sys.argv[1] if len(sys.argv) > 1 else DATA_DIR))
