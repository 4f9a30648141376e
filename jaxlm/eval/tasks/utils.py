"""Loader, filter and scorer functions of jaxlm's offline harness tasks (referenced from the YAML files with
!function). Data paths are relative to this folder unless absolute; `--metadata '{"data_file": PATH}'` overrides."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_jsonl(data_file=None, default_file=None, split: str = "test", **_metadata):
    """A DatasetDict {split: rows} from a local jsonl file (DataFileNotFoundError / DataError name the file)."""
    import datasets

    from jaxlm.errors import DataError, DataFileNotFoundError

    name = data_file or default_file
    if not name:
        raise DataError("task data: no data_file given (dataset_kwargs.default_file or --metadata data_file)")
    p = Path(name)
    p = p if p.is_absolute() else HERE / p
    if not p.exists():
        raise DataFileNotFoundError(f"task data file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: not valid JSON ({e})") from None
    if not rows:
        raise DataError(f"{p}: no records")
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def load_humaneval(data_file=None, default_file=None, split: str = "test", **_metadata):
    """HumanEval-format problems (jaxlm.eval.code.read_humaneval checks the fields)."""
    import datasets

    from jaxlm.eval.code import read_humaneval

    p = Path(data_file or default_file)
    rows = read_humaneval(p if p.is_absolute() else HERE / p)
    keep = ("task_id", "prompt", "test", "entry_point")
    return datasets.DatasetDict({split: datasets.Dataset.from_list([{k: r[k] for k in keep} for r in rows])})


def build_programs(resps, docs):
    """Filter: each sampled completion stays a completion (list of n strings per problem)."""
    return [list(r) for r in resps]


def code_results(doc, results):
    """pass@1 and pass@k (k = the number of samples) of one problem, executed in the sandbox."""
    from jaxlm.eval.code import evaluate_samples

    samples = results[0] if results and isinstance(results[0], list) else list(results)
    r = evaluate_samples(doc, samples, ks=(1, len(samples)))
    return {"pass@1": r["pass@1"], "pass@n": r[f"pass@{len(samples)}"]}
