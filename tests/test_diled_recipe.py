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


@pytest.mark.slow  # three engine runs (compiles) in one test; the stage runs themselves are the image test's
def test_warm_start_schedule_stops_between_stages_and_resumes(tmp_path, capsys):
    """--schedule warm: the autoencoder alone, then the DDPM on frozen latents, then joint (the original's warm
    start); --stop-at counts all stages' steps; the frozen stage leaves the autoencoder bit-unchanged."""
    import numpy as np
    from flax import nnx

    from jaxlm.diled.task import load_diled
    from jaxlm.models.diled.model import diled_config

    out = tmp_path / "warm"
    args = ["--modality", "image", "--out", str(out), "--schedule", "warm", "--steps", "2", "--ddpm-steps", "2",
            "--ft-steps", "2", "--batch", "32", "--limit", "64", "--diffusion-steps", "8", "--samples", "2",
            "--ckpt-every", "1", "--no-progress"]
    assert diled.main([*args, "--stop-at", "3"]) == 0
    assert "stopped at step 3 of 6" in capsys.readouterr().out
    assert diled.main([*args, "--resume"]) == 0
    rep = json.loads((out / "samples.json").read_text())
    assert rep["schedule"] == "warm" and [s["steps"][-1] for s in rep["train_summary"]["stages"]] == [2, 2, 2]
    cfg = diled_config("image", num_steps=8)
    ae = load_diled(out / "stage1-ae", cfg.replace(loss=cfg.loss.replace(ddpm_weight=0.0)))
    ddpm = load_diled(out / "stage2-ddpm", cfg)
    for a, b in zip(jax_leaves(nnx.state(ae.ae)), jax_leaves(nnx.state(ddpm.ae))):
        np.testing.assert_array_equal(a, b)
    assert any(np.any(a != b) for a, b in zip(jax_leaves(nnx.state(ae.denoiser)), jax_leaves(nnx.state(ddpm.denoiser))))


def jax_leaves(tree):
    import jax
    import numpy as np

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow  # the Python-doc corpus (~5-10 s), its BPE and three compiles; the BPE itself is test_diled_text's
def test_text_recipe_default_tokenizer_trains_and_reports(tmp_path):
    out = tmp_path / "txt"
    assert diled.main(["--modality", "text", "--out", str(out), "--steps", "2", "--ddpm-steps", "2", "--ft-steps", "2",
                       "--batch", "32", "--limit", "64", "--diffusion-steps", "8", "--samples", "2",
                       "--word-dropout", "0.25", "--no-progress"]) == 0
    rep = json.loads((out / "samples.json").read_text())
    assert rep["schedule"] == "warm" and 0 <= rep["recon_token_acc"] <= 1 and len(rep["samples"]) == 2
    assert len(rep["interpolation"]) == 6 and rep["interpolation"][0][:1].isupper()
