"""Meta-prompt templates and data sets shipped in jaxlm/align/data, the base-model prompt format and the seeded
training-query sampler.

Templates are text files with a small header (``# version: N`` lines) ended by ``---``; the body uses ``$name``
placeholders (string.Template), so JSON braces in the templates need no escaping. Data sets are JSON files with a
``version`` field.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import string
from dataclasses import dataclass
from typing import Sequence

from jaxlm.align.state import Example
from jaxlm.errors import ConfigError, DataError, DataFileNotFoundError

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
STOP = ("<END>", "<END", "# Query:", "\n# Query")


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    text: str

    def render(self, **kw: str) -> str:
        try:
            return string.Template(self.text).substitute(**{k: str(v) for k, v in kw.items()})
        except KeyError as e:
            raise KeyError(f"template {self.name!r} needs variable {e.args[0]!r}") from None


def load_template(name: str, data_dir: str | pathlib.Path | None = None) -> Template:
    path = pathlib.Path(data_dir or DATA_DIR) / "prompts" / f"{name}.txt"
    if not path.exists():
        raise DataFileNotFoundError(f"meta-prompt {name!r} not found at {path}")
    raw = path.read_text()
    head, sep, body = raw.partition("\n---\n")
    if not sep:
        raise DataError(f"{path}: missing the '---' line that ends the header")
    version = None
    for line in head.splitlines():
        line = line.lstrip("# ").strip()
        if line.startswith("version:"):
            version = int(line.split(":", 1)[1])
    if version is None:
        raise DataError(f"{path}: header has no 'version:' field")
    return Template(name, version, body.strip("\n"))


def load_data(name: str, data_dir: str | pathlib.Path | None = None) -> dict:
    path = pathlib.Path(data_dir or DATA_DIR) / f"{name}.json"
    data = json.loads(path.read_text())
    if "version" not in data:
        raise DataError(f"{path}: missing the 'version' field")
    return data


def template_versions(data_dir=None) -> dict[str, int]:
    d = pathlib.Path(data_dir or DATA_DIR)
    out = {p.stem: load_template(p.stem, d).version for p in sorted((d / "prompts").glob("*.txt"))}
    out.update({p.stem: json.loads(p.read_text())["version"] for p in sorted(d.glob("*.json"))})
    return out


def seed_examples(data_dir=None) -> tuple[Example, ...]:
    return tuple(Example(e["query"], e["answer"]) for e in load_data("icl_seed", data_dir)["examples"])


POOL_ORDER = ("alpaca", "lima", "malicious")  # the original's order when topping up the counts
CHUNK_ORDER = ("lima", "malicious", "alpaca")  # ... and when interleaving


def load_query_pools(source: str | os.PathLike | None = None, data_dir=None) -> dict[str, list[str]]:
    """The three training-query pools. `source` None: the packaged train_queries.json; a directory in the
    original's layout (alpaca_train.json: [{"instruction"}], lima_subsample_train.json: [{"query"}], mal_train.txt:
    one query a line); or a JSON file {"pools": {"alpaca": [...], "lima": [...], "malicious": [...]}}."""
    if source is None:
        pools = load_data("train_queries", data_dir)["pools"]
    else:
        p = pathlib.Path(source)
        if p.is_dir():
            files = {"alpaca": p / "alpaca_train.json", "lima": p / "lima_subsample_train.json",
                     "malicious": p / "mal_train.txt"}
            for f in files.values():
                if not f.exists():
                    raise DataFileNotFoundError(f"training queries: {f} not found (a query directory in the "
                                                f"original's layout has {', '.join(x.name for x in files.values())})")
            try:
                pools = {"alpaca": [d["instruction"] for d in json.loads(files["alpaca"].read_text())],
                         "lima": [d["query"] for d in json.loads(files["lima"].read_text())],
                         "malicious": [ln.strip() for ln in files["malicious"].read_text().splitlines()
                                       if ln.strip()]}
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"training queries in {p}: {type(e).__name__} {e}") from None
        elif p.exists():
            try:
                pools = json.loads(p.read_text())["pools"]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{p}: expected JSON with a 'pools' object ({type(e).__name__} {e})") from None
        else:
            raise DataFileNotFoundError(f"training queries: {p} not found")
    missing = [k for k in POOL_ORDER if not isinstance(pools.get(k), list)]
    if missing:
        raise DataError(f"training queries{'' if source is None else ' ' + str(source)}: missing pool(s) {missing}")
    return {k: [str(q) for q in pools[k]] for k in POOL_ORDER}


def pool_counts(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """The original's allocation: floor(n * size / total) per pool, the remainder topped up alpaca, lima,
    malicious in turn."""
    total = sum(sizes.values())
    n = min(n, total)
    counts = {k: int(n / total * sizes[k]) for k in POOL_ORDER}
    for i in range(n - sum(counts.values())):
        counts[POOL_ORDER[i % 3]] += 1
    return counts


def interleave_pools(pools: dict[str, Sequence[str]]) -> list[str]:
    """Round-robin of chunks (lima, malicious, alpaca); a pool's chunk is max(1, int(10 * size / total)) queries,
    so every stretch of the list holds each kind (the original's interleaving)."""
    total = sum(len(v) for v in pools.values())
    size = {k: max(int(10 * len(pools[k]) / total), 1) for k in CHUNK_ORDER}
    out: list[str] = []
    r = 0
    while any(r * size[k] < len(pools[k]) for k in CHUNK_ORDER):
        for k in CHUNK_ORDER:
            out.extend(pools[k][r * size[k]:(r + 1) * size[k]])
        r += 1
    return out


def training_queries(n: int = 180, *, sample_seed: int = 0, shuffle_seed: int = 42, source=None,
                     data_dir=None) -> tuple[str, ...]:
    """The stage-2 training queries as the original builds them: per-pool counts in proportion (`pool_counts`), a
    random sample of each pool (seeded by `sample_seed`; the original's was not seeded), the interleaving
    (`interleave_pools`), then numpy's legacy shuffle with seed 42 (`np.random.seed(42); np.random.shuffle`)."""
    import numpy as np

    pools = load_query_pools(source, data_dir)
    counts = pool_counts(n, {k: len(v) for k, v in pools.items()})
    rng = random.Random(sample_seed)
    picked = {k: rng.sample(pools[k], counts[k]) for k in POOL_ORDER}
    order = interleave_pools(picked)
    np.random.RandomState(shuffle_seed).shuffle(order)
    return tuple(order)


def sample_training_queries(n: int, seed: int = 0, data_dir=None, *, source=None) -> tuple[str, ...]:
    """`training_queries(n, sample_seed=seed)` (the name earlier versions used)."""
    return training_queries(n, sample_seed=seed, source=source, data_dir=data_dir)


def eval_queries(data_dir=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    d = load_data("eval_queries", data_dir)
    return tuple(d["regular"]), tuple(d["harmful"])


def base_prompt(system_prompt: str, examples: Sequence[Example], query: str, fmt: str = "raw"):
    """The prompt the base model answers.

    fmt='raw' (the original training format, consistent headings): '# Instructions' + system prompt, the examples as
    '# Query:' / '# Answer:' blocks with answers wrapped in <START>...<END>, then the query and an answer heading
    ending in '<START>'; generation stops at '<END>'.
    fmt='chat': chat messages; the system message holds the prompt and the examples, the user message the query
    (what an instruct model with a chat template expects)."""
    if fmt == "raw":
        parts = [f"# Instructions\n{system_prompt}"]
        for ex in examples:
            parts.append(f"# Query:\n{ex.query}\n\n# Answer:\n<START>{ex.answer}<END>")
        parts.append(f"# Query:\n{query}\n\n# Answer:\n<START>")
        return "\n\n".join(parts)
    if fmt == "chat":
        system = system_prompt
        if examples:
            shots = "\n\n".join(f"Example request: {ex.query}\nExample reply: {ex.answer}" for ex in examples)
            system += "\n\nHere are examples of good replies:\n\n" + shots
        return [{"role": "system", "content": system}, {"role": "user", "content": query}]
    raise ConfigError(f"fmt={fmt!r}: unknown base prompt format (expected 'raw' or 'chat')")
