"""`python -m recipes.drpo` wiring with the scripted backend: all artifacts are written, and a second run over the
same --out directory issues no backend call at all (stage 1 file, search checkpoint and response cache)."""

import json

from recipes import drpo


def test_recipe_scripted_end_to_end_and_free_rerun(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--backend", "scripted", "--out", str(out), "--depth", "2", "--icl-examples", "3", "--eval-regular", "2",
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
