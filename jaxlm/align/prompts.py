"""Meta-prompt templates and data sets shipped in jaxlm/align/data, the base-model prompt format and the seeded
training-query sampler.

Templates are text files with a small header (``# version: N`` lines) ended by ``---``; the body uses ``$name``
placeholders (string.Template), so JSON braces in the templates need no escaping. Data sets are JSON files with a
``version`` field.
"""

from __future__ import annotations

import json
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


def sample_training_queries(n: int, seed: int = 42, data_dir=None) -> tuple[str, ...]:
    """Draw n queries from the pools in proportion (seeded: the original's sampler was not), interleave the pools
    so every prefix is mixed, and return them in a reproducible order."""
    data = load_data("train_queries", data_dir)
    pools, props = data["pools"], data["proportions"]
    total = sum(len(v) for v in pools.values())
    n = min(n, total)
    rng = random.Random(seed)
    # largest-remainder allocation of n over the pools, capped by pool sizes
    want = {k: props[k] * n for k in pools}
    take = {k: min(len(pools[k]), int(want[k])) for k in pools}
    rest = sorted(pools, key=lambda k: want[k] - int(want[k]), reverse=True)
    while sum(take.values()) < n:
        for k in rest:
            if sum(take.values()) < n and take[k] < len(pools[k]):
                take[k] += 1
    picked = {k: rng.sample(pools[k], take[k]) for k in sorted(pools)}
    order: list[str] = []
    i = 0
    while len(order) < n:
        for k in sorted(pools):
            if i < len(picked[k]):
                order.append(picked[k][i])
        i += 1
    return tuple(order)


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
