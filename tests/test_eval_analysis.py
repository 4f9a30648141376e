"""recipes.analysis on a tiny run made here: perplexity per source (= the training loop's own held-out numbers),
a harness task, memorization at the recorded data order; jsonl + table + PNG; resumes after a stop part-way."""

import json

import pytest

pytest.importorskip("lm_eval")

from recipes import analysis, crystal  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXLM_COMPILE_CACHE", "0")  # keep the test session's jax config untouched
        assert crystal.main(["--mesh", "8x1", "--steps", "3", "--out", str(out), "--no-progress",
                             "--set", "train.seq_len=32", "--set", "train.global_batch=8",
                             "--set", "train.eval_batches=1", "--set", "train.keep_release=2"]) == 0  # ckpts 2, 3
    return out


def test_analysis_outputs_and_resume(tiny_run, tmp_path):
    out = tmp_path / "an"
    args = [str(tiny_run), "--out", str(out), "--tasks", "jaxlm_heldout_cloze", "--limit", "1", "--mem-steps", "3",
            "--mem-rows", "2", "--mem-k", "8", "--mesh", "8x1"]
    assert analysis.main(args + ["--max-checkpoints", "1"]) == 0  # stopped part-way
    first = [json.loads(x) for x in (out / "analysis.jsonl").read_text().splitlines()]
    assert first[0]["kind"] == "settings" and first[0]["mem_k"] == 8  # what a resume must match
    assert len({r["step"] for r in first[1:]}) == 1
    with open(out / "analysis.jsonl", "a") as f:  # a record half-written when the process was killed
        f.write('{"kind": "mem", "step": 99, "sco')
    assert analysis.main(args) == 0
    recs = [json.loads(x) for x in (out / "analysis.jsonl").read_text().splitlines()]
    assert recs[:len(first)] == first  # the finished checkpoint is kept, not recomputed
    done = {(r["step"], r["part"]) for r in recs if r["kind"] == "done"}
    ckpts = sorted(int(p.name) for p in (tiny_run / "checkpoints").iterdir())
    assert done == {(s, p) for s in ckpts for p in analysis.PARTS}
    # perplexity = the training loop's held-out evaluation at the last step
    train_eval = [r for r in map(json.loads, (tiny_run / "metrics.jsonl").read_text().splitlines())
                  if r["kind"] == "eval"][-1]
    last = {r["source"]: r["ppl"] for r in recs if r["kind"] == "ppl" and r["step"] == ckpts[-1]}
    assert last == pytest.approx({k: train_eval[f"eval/{k}/ppl"] for k in last}, rel=1e-4)
    mem = [r for r in recs if r["kind"] == "mem"]
    assert {r["data_step"] for r in mem} == {0, 1, 2} and all(0 <= r["score"] <= 1 for r in mem)
    assert all(r["seen"] == (r["data_step"] < r["step"]) for r in mem)
    assert any(r["kind"] == "tasks" and r["metric"] == "acc" for r in recs)
    assert (out / "analysis.png").stat().st_size > 10_000 and "| step |" in (out / "analysis.md").read_text()
    assert analysis.main(args[:-2] + ["--mem-k", "4"]) == 2  # resuming with other settings is refused


def test_analysis_bad_input(tiny_run, tmp_path, capsys):
    assert analysis.main([str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err
    assert analysis.main([str(tiny_run), "--steps", "7", "--out", str(tmp_path / "x")]) == 2
    assert "--steps [7]" in capsys.readouterr().err
