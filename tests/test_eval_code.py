"""Execution-based code evaluation: the unbiased pass@k estimator, the HumanEval reader, and the sandbox (an
infinite loop and a memory hog are stopped; generated code never runs in the test process)."""

import json
import math
import os

import pytest

from jaxlm.errors import ConfigError, DataError, DataFileNotFoundError
from jaxlm.eval.code import check_program, evaluate_samples, pass_at_k, read_humaneval, run_program
from jaxlm.eval.offline import code_problems


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 5), (20, 0, 4), (5, 5, 2), (7, 2, 6), (200, 17, 10)])
def test_pass_at_k_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_at_k_bad_arguments():
    with pytest.raises(ConfigError, match="k=11 is larger"):
        pass_at_k(10, 1, 11)
    with pytest.raises(ConfigError, match="c=12"):
        pass_at_k(10, 12, 1)


def test_sandbox_statuses(tmp_path):
    marker = tmp_path / "touched"
    # the program runs in another process, in an empty temporary directory
    r = run_program(f"import os\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\n")
    assert r.passed and int(marker.read_text()) != os.getpid()
    assert run_program("assert 1 == 2").status == "failed"
    assert run_program("while True:\n    pass\n", timeout=1.0).status == "timeout"
    hog = run_program("x = bytearray(1 << 31)\n", memory_mb=256)
    assert hog.status == "memory" and "MemoryError" in hog.stderr


def test_humaneval_reader_and_canonical_solutions(tmp_path):
    probs = code_problems()
    f = tmp_path / "he.jsonl"
    f.write_text("".join(json.dumps(p) + "\n" for p in probs))
    assert [p["task_id"] for p in read_humaneval(f)] == [p["task_id"] for p in probs]
    p = probs[0]
    res = evaluate_samples(p, [p["canonical_solution"], "    return a - b\n"], ks=(1, 2))
    assert res["passed"] == 1 and res["pass@1"] == 0.5 and res["pass@2"] == 1.0
    assert "check(add)" in check_program(p, "    return a + b\n")
    with pytest.raises(DataFileNotFoundError, match="nope.jsonl"):
        read_humaneval(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x", "prompt": "def f():\n"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing string field\(s\) \['test', 'entry_point'\]"):
        read_humaneval(bad)
