"""`python -m recipes.drpo` wiring with the scripted backend: all artifacts are written, and a second run over the
same --out directory issues no backend call at all (stage 1 file, search checkpoint and response cache)."""

import json

from recipes import drpo


def test_recipe_scripted_end_to_end_and_free_rerun(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--backend", "scripted", "--out", str(out), "--depth", "3", "--icl-examples", "3", "--eval-regular", "2",
            "--eval-harmful", "1"]
    assert drpo.main(args) == 0
    for name in ("icl.json", "search.json", "best_prompt.txt", "trace.json", "eval.json", "eval.md", "summary.json",
                 "cache.sqlite", "aspects.json", "icl_examples.json"):
        assert (out / name).exists(), name
    first = json.loads((out / "summary.json").read_text())
    assert first["levels"] == 2 and set(first["eval"]) == {"default prompt", "DRPO prompt + ICL"}
    assert first["usage"]["base"]["calls"] > 0 and first["usage"]["judge"]["calls"] > 0
    assert (out / "best_prompt.txt").read_text().strip() == first["best_prompt"]
    assert "| DRPO prompt + ICL |" in capsys.readouterr().out

    assert drpo.main(args) == 0
    second = json.loads((out / "summary.json").read_text())
    assert all(u["calls"] == 0 for u in second["usage"].values())  # everything came from checkpoints or the cache
    assert second["eval"] == first["eval"] and second["best_prompt"] == first["best_prompt"]


def test_original_preset_settings():
    cf = drpo.configs(drpo.parse_args(["--preset", "original"]))
    s, icl, j, ev = cf["search"], cf["icl"], cf["judge"], cf["eval"]
    assert (s.beam_width, s.n_actions, s.depth, s.max_depth_increase, s.skip_threshold) == (2, 3, 20, 10, 4.5)
    assert (s.opt_temperature, s.opt_top_p, s.base_temperature, s.base_top_p) == (0.2, 0.95, 0.0, 1.0)
    assert s.initial_prompt == "You are a helpful assistant." and s.fmt == "raw" and s.history == 5
    # 2048 tokens for every role
    assert s.base_max_tokens == s.opt_max_tokens == icl.max_tokens == j.max_tokens == 2048
    assert not (s.opt_prefill or icl.prefill or j.prefill) and j.temperature == 0.0
    assert (icl.rounds, icl.min_aspects, icl.max_aspects, icl.temperature) == (5, 3, 6, 0.0)
    assert (j.min_aspects, j.max_aspects) == (2, 5)
    # inference as the original's AutoModel.generate: temperature 0.7, top-p 0.95, 512 new tokens
    assert (ev.temperature, ev.top_p, ev.max_tokens) == (0.7, 0.95, 512)
    # the library's defaults are the original's settings too
    from jaxlm.align.evaluate import EvalConfig
    from jaxlm.align.icl import ICLConfig
    from jaxlm.align.reward import JudgeConfig
    from jaxlm.align.search import SearchConfig
    assert (s, icl, j, ev) == (SearchConfig(), ICLConfig(), JudgeConfig(), EvalConfig())
    a = drpo.parse_args(["--preset", "original", "--depth", "5"])
    assert (a.depth, a.train_queries, a.icl_examples, a.icl_k, a.eval_icl_k, a.embedder) == (5, 180, 16, 2, 3, "minilm")


def test_original_preset_runs_scripted(tmp_path):
    out = tmp_path / "orig"
    assert drpo.main(["--preset", "original", "--backend", "scripted", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ck = json.loads((out / "search.json").read_text())
    assert len(ck["queries"]) == 180
    levels, skips = summary["levels"], summary["skips"]
    assert 19 <= levels <= 29 and levels == 19 + min(skips, 10)  # depth 20 states, +1 per skipping level
    assert len(summary["best_path_rewards"]) == levels
    icl = json.loads((out / "icl.json").read_text())["records"]
    assert len(icl) == 16 and all(r["rounds"] <= 5 for r in icl)
    items = json.loads((out / "eval.json").read_text())["systems"][1]["items"]
    assert len(items) == 18 and all(len(it["examples"]) == 3 for it in items)  # all eval queries, k = 3
