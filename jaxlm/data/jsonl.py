"""JSON Lines, parsed once: every reader of .jsonl files (data sources, HumanEval problems, judge outputs) gets the
same skipping of blank lines and the same error naming the file and line."""

from __future__ import annotations

import json
from typing import Iterable, Iterator

from jaxlm.errors import DataError


def parse_jsonl(lines: Iterable[str], source) -> Iterator[tuple[int, object]]:
    """(line number from 1, parsed value) for every non-blank line; DataError "SOURCE, line N: invalid JSON"."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}, line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
