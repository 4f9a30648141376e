"""recipes.diled end to end on the engine (tiny image run: train, stop, resume, checkpoint, load, reconstruct,
generate, interpolate, grid PNG) and its bad-input errors (modality, protein alphabet, latent size on load)."""

import json

import pytest

from jaxlm.errors import CheckpointError
from recipes import diled

TINY = ["--steps", "4", "--batch", "32", "--limit", "64", "--diffusion-steps", "8", "--samples", "2",
        "--ckpt-every", "2", "--no-progress"]


def test_image_recipe_trains_stops_resumes_and_loads(tmp_path, capsys):
    out = tmp_path / "img"
    assert diled.main(["--modality", "image", "--out", str(out), "--stop-at", "2", *TINY]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    assert diled.main(["--modality", "image", "--out", str(out), "--resume", *TINY]) == 0
    assert "resumed from" in capsys.readouterr().out
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == [0, 1, 2, 3]
    rep = json.loads((out / "samples.json").read_text())
    assert rep["recon_mse"] > 0 and rep["train_summary"]["steps"] == [2, 4]
    assert (out / "samples.png").stat().st_size > 1000
    from jaxlm.models.diled.model import diled_config
    from jaxlm.diled.task import load_diled

    cfg = diled_config("image", num_steps=8)
    assert load_diled(out, cfg).cfg == cfg
    bad = cfg.replace(ae=cfg.ae.__class__(latent_dim=32), denoiser=cfg.denoiser.__class__(32, hidden=128,
                                                                                          num_layers=4))
    with pytest.raises(CheckpointError, match="ae.latent_dim: checkpoint has 16, given 32"):
        load_diled(out, bad)


def test_recipe_bad_input(tmp_path, capsys):
    assert diled.main(["--modality", "audio"]) == 2
    assert "--modality 'audio'" in capsys.readouterr().err
    d = tmp_path / "g"
    d.mkdir()
    (d / "train.csv").write_text("CDR3,enrichment\nJJAAAYDYWJJ,1.0\nJJAABZYJJ,0.5\n")
    (d / "test.csv").write_text("CDR3,enrichment\nJJAAAYDYWJJ,1.0\n")
    assert diled.main(["--modality", "protein", "--data", str(d), "--out", str(tmp_path / "p"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "train.csv row 1" in err and "'B' at position 4" in err
