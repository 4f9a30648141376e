"""Immutable data of the DRPO search: aspect selections, evaluations, ICL examples, per-level results, beam nodes.

Everything here is a frozen dataclass made of tuples, strings and numbers, so a search state can be hashed, compared
for equality (resume tests) and written to / read from JSON without loss (`to_json` / `from_json`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from jaxlm.errors import CheckpointError


@dataclass(frozen=True)
class AspectSelection:
    """The aspects a judge chose for one query (canonical catalogue names) and its reasoning."""

    aspects: tuple[str, ...]
    reasoning: str = ""
    fallback: bool = False  # True when the judge's answer was unusable and the default aspects were used


@dataclass(frozen=True)
class AspectScore:
    aspect: str
    score: int  # 1..5
    rationale: str = ""


@dataclass(frozen=True)
class Evaluation:
    """A judge's scores of one response. Empty `scores` means the judgement could not be parsed (reward 0)."""

    scores: tuple[AspectScore, ...] = ()

    @property
    def ok(self) -> bool:
        return len(self.scores) > 0

    @property
    def reward(self) -> float:
        return sum(s.score for s in self.scores) / len(self.scores) if self.scores else 0.0

    @property
    def total(self) -> int:
        return sum(s.score for s in self.scores)

    def all_perfect(self) -> bool:
        return self.ok and all(s.score == 5 for s in self.scores)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {s.aspect: {"rationale": s.rationale, "score": s.score} for s in self.scores}


@dataclass(frozen=True)
class Example:
    """An in-context example: a query and a model answer (seed or optimized)."""

    query: str
    answer: str


@dataclass(frozen=True)
class ICLRecord:
    """Stage-1 result for one seed example: the best answer found and how it got there."""

    example: Example
    selection: AspectSelection
    evaluation: Evaluation
    rounds: int
    history: tuple[float, ...] = ()  # reward after each round (the kept answer's reward)


@dataclass(frozen=True)
class LevelResult:
    """One level of a search path: a system prompt evaluated on one training query."""

    system_prompt: str
    query: str
    output: str
    evaluation: Evaluation
    examples: tuple[Example, ...] = ()

    @property
    def reward(self) -> float:
        return self.evaluation.reward


@dataclass(frozen=True)
class Node:
    """A path from the root: results[0] is the root (initial prompt), later entries one per level.

    The path reward is the mean reward of the levels after the root (the original excludes the root)."""

    results: tuple[LevelResult, ...]

    @property
    def prompt(self) -> str:
        return self.results[-1].system_prompt

    @property
    def rewards(self) -> tuple[float, ...]:
        return tuple(r.reward for r in self.results[1:])

    @property
    def mean_reward(self) -> float:
        rs = self.rewards
        return sum(rs) / len(rs) if rs else self.results[0].reward


@dataclass(frozen=True)
class SearchState:
    """The beam after `level` levels (paths of level + 1 states). `depth` is the most states a path may hold,
    the root included; it grows by one each level where the skip rule fired (bounded)."""

    level: int
    depth: int
    depth_increases: int
    beam: tuple[Node, ...]
    finished: bool = False
    skips: int = 0
    history: tuple[tuple[float, ...], ...] = field(default=())  # per level: the kept nodes' mean rewards


# ---------------------------------------------------------------- JSON round trip (checkpoints)

_TYPES = {c.__name__: c for c in (AspectSelection, AspectScore, Evaluation, Example, ICLRecord, LevelResult, Node,
                                  SearchState)}


def to_json(obj: Any) -> Any:
    """Encode a state object (nested dataclasses/tuples) as plain JSON data with type tags."""
    if dataclasses.is_dataclass(obj):
        d = {"__type__": type(obj).__name__}
        for f in dataclasses.fields(obj):
            d[f.name] = to_json(getattr(obj, f.name))
        return d
    if isinstance(obj, (tuple, list)):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def from_json(data: Any) -> Any:
    """Inverse of `to_json`: lists become tuples, tagged dicts become the dataclasses."""
    if isinstance(data, list):
        return tuple(from_json(x) for x in data)
    if isinstance(data, dict):
        if "__type__" in data:
            name = data["__type__"]
            if name not in _TYPES:
                raise CheckpointError(f"unknown state type {name!r} in checkpoint")
            cls = _TYPES[name]
            kwargs = {k: from_json(v) for k, v in data.items() if k != "__type__"}
            return cls(**kwargs)
        return {k: from_json(v) for k, v in data.items()}
    return data
