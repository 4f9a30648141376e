"""benchmarks/record.py keeps each benchmark's rows inside its own BENCHMARKS.md section."""

from benchmarks.record import record


def test_rows_land_in_their_own_section(tmp_path):
    md = tmp_path / "B.md"
    record("A (a.py)", "| x |\n|---|", "| 1 |", md)
    record("B (b.py)", "intro B", "### run 1\n\n| 7 |", md)
    record("A (a.py)", "| x |\n|---|", "| 2 |", md)
    record("B (b.py)", "intro B", "### run 2\n\n| 8 |", md)
    text = md.read_text()
    assert text == ("# Benchmarks\n\n## A (a.py)\n\n| x |\n|---|\n| 1 |\n| 2 |\n\n"
                    "## B (b.py)\n\nintro B\n\n### run 1\n\n| 7 |\n\n### run 2\n\n| 8 |\n")


WORKER = """
import os, sys, time
sys.path.insert(0, {root!r})
from benchmarks.interleave import apply_threads, serve
threads = apply_threads()
log = open({log!r}, "a")
def run(i):
    log.write(f"{{sys.argv[1]}} {{i}}\\n"); log.flush()
    return i * 10
serve(run, {{"name": sys.argv[1], "threads": threads, "cpus": len(os.sched_getaffinity(0))}})
"""


def test_interleaved_workers_alternate_and_pin(tmp_path):
    """benchmarks/interleave.py: rounds go round-robin over the workers, a 1-thread worker is pinned to one core,
    and a worker that dies before it is ready is reported by name."""
    import sys
    from pathlib import Path

    import pytest

    from benchmarks.interleave import Pool

    log = tmp_path / "log"
    code = WORKER.format(root=str(Path(__file__).resolve().parents[1]), log=str(log))
    specs = {"a": ([sys.executable, "-c", code, "a"], None), "b": ([sys.executable, "-c", code, "b"], 1)}
    with Pool(specs) as pool:
        res = pool.measure(rounds=2, per_round=2, warmup=1)
    assert [line.split() for line in log.read_text().splitlines()] == [
        ["a", "0"], ["b", "0"], ["a", "1"], ["a", "2"], ["b", "1"], ["b", "2"], ["a", "3"], ["a", "4"],
        ["b", "3"], ["b", "4"]]
    assert res["a"]["n"] == res["b"]["n"] == 4 and res["a"]["last"] == 40
    assert res["b"]["values"] == [10, 20, 30, 40]
    assert res["b"]["threads"] == 1 and res["b"]["cpus"] == 1 and res["a"]["threads"] is None
    with pytest.raises(RuntimeError, match="'dead'"):
        Pool({"dead": ([sys.executable, "-c", "raise SystemExit(3)"], None)})
