"""Recording benchmark results in BENCHMARKS.md: each script owns one `## ` section and adds to its end.

JAXLM_BENCHMARKS_MD=path redirects the writes (smoke runs, tests).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def benchmarks_md() -> Path:
    return Path(os.environ.get("JAXLM_BENCHMARKS_MD", ROOT / "BENCHMARKS.md"))


def utc_now(fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime(fmt)


def load_average() -> float:
    """The 1-minute load average (nan where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def load_label(*loads: float) -> str:
    """", under load (other jobs)" when any load average exceeds half the cores, else "": rows say how they ran."""
    return ", under load (other jobs)" if max(loads) > (os.cpu_count() or 1) / 2 else ""


def record(title: str, intro: str, block: str, path: Path | None = None) -> Path:
    """Append `block` (table rows, or a dated `### ` sub-section) at the end of the section `## {title}`.

    The section is created at the end of the file, with `intro` (text and/or a table header) under its heading,
    when it does not exist yet; sections of other benchmarks are left where they are.
    """
    path = benchmarks_md() if path is None else Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head = f"## {title}"
    block = block.strip("\n")
    if head not in text:
        text = text.rstrip("\n") + f"\n\n{head}\n\n{intro.strip(chr(10))}\n" + ("\n" if block.startswith("#") else "")
        text += block + "\n"
    else:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        end = len(text) if nxt < 0 else nxt
        sep = "\n\n" if block.startswith("#") else "\n"
        rest = "" if nxt < 0 else "\n" + text[end:].lstrip("\n")
        text = text[:end].rstrip("\n") + sep + block + "\n" + rest
    path.write_text(text)
    print(f"recorded in {path}")
    return path
