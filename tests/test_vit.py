"""ViT image encoder: shapes, positions, select_layer, bad input, and the CLIP vision tower import against
transformers' CLIPVisionModel on a tiny random config (1e-4)."""

import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ViTConfig, vit_preset
from jaxlm.errors import CheckpointError, ConfigError, ShapeError
from jaxlm.io.clip_hf import load_clip_vision
from jaxlm.models.vit import ViT, forward, patchify


def _images(cfg, n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, cfg.image_size, cfg.image_size, cfg.channels)).astype(
        np.float32)


def test_tiny_vit_shapes_positions_and_errors():
    cfg = vit_preset("vit-tiny")
    gdef, st = nnx.split(ViT(cfg, rngs=nnx.Rngs(0)))
    vit = lambda x: forward(gdef, st, x)  # noqa: E731
    out = vit(_images(cfg))
    assert out.shape == (2, cfg.num_patches, cfg.hidden_size) == (2, 16, 64)
    assert np.isfinite(np.asarray(out)).all()
    # the output is a per-patch function of the image: changing one patch changes its own feature most
    x = _images(cfg)
    y = x.copy()
    y[0, :8, :8] = 0.0
    d = np.abs(np.asarray(vit(y)) - np.asarray(vit(x))).mean(-1)
    assert d[1].max() == 0 and d[0].argmax() == 0
    sc = ViT(cfg.replace(positions="sincos", cls_token=True, select_layer=-2), rngs=nnx.Rngs(0))
    assert sc.pos is None and sc(x).shape == (2, 16, 64)
    with pytest.raises(ShapeError, match=r"images have shape \(2, 16, 16, 3\); expected \[B, 32, 32, 3\]"):
        vit(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ShapeError, match=r"images have shape \(32, 32, 3\)"):
        ViT(cfg, rngs=nnx.Rngs(0))(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ConfigError, match="image_size=30 is not a multiple of patch_size=8"):
        ViTConfig(image_size=30)
    with pytest.raises(ConfigError, match="select_layer=-3"):
        ViTConfig(select_layer=-3)
    with pytest.raises(ConfigError, match="unknown ViT preset"):
        vit_preset("nope")


def test_patchify_order_matches_a_strided_conv():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    p = np.asarray(patchify(x, 2))
    assert p.shape == (2, 4, 12)
    np.testing.assert_array_equal(p[0, 1], x[0, 0:2, 2:4].reshape(-1))  # patch (row 0, col 1), (r, c, C) order
    np.testing.assert_array_equal(p[1, 2], x[1, 2:4, 0:2].reshape(-1))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    c = vit_preset("clip-vit-tiny")
    hf = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, image_size=c.image_size, patch_size=c.patch_size, hidden_act="quick_gelu",
        layer_norm_eps=1e-5)).eval()
    with torch.no_grad():  # random LayerNorm affine too, so a swapped scale/bias cannot pass
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if n.endswith("weight") else 0.0))
    d = tmp_path_factory.mktemp("clip")
    hf.save_pretrained(d)
    return d, hf


def test_clip_vision_tower_matches_transformers(clip_dir):
    import torch

    d, hf = clip_dir
    cfg = vit_preset("clip-vit-tiny")
    images = _images(cfg, 3, seed=1)
    mean, std = np.asarray(cfg.pixel_mean, np.float32), np.asarray(cfg.pixel_std, np.float32)
    pix = torch.tensor((((images + 1) / 2 - mean) / std).transpose(0, 3, 1, 2))
    with torch.no_grad():
        hs = hf(pixel_values=pix, output_hidden_states=True).hidden_states
    for layer in (-2, -1):  # LLaVA-1.5's penultimate-layer patch features, and the last layer
        vit, vcfg = load_clip_vision(d, select_layer=layer)
        assert vcfg.num_layers == 3 and vcfg.act == "quick_gelu" and vcfg.cls_token
        np.testing.assert_allclose(np.asarray(forward(*nnx.split(vit), images)), hs[layer][:, 1:].numpy(), atol=1e-4, rtol=1e-4)


def test_clip_import_is_strict(clip_dir, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    d, _ = clip_dir
    t = load_file(str(d / "model.safetensors"))
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(d / "config.json", bad / "config.json")
    pre = "vision_model." if "vision_model.embeddings.class_embedding" in t else ""
    t = {k[len(pre):]: v for k, v in t.items()}
    # the full CLIPModel layout (keys under vision_model., a text tower) loads too; its text keys are ignored
    save_file({**{"vision_model." + k: v for k, v in t.items()}, "text_model.final_layer_norm.weight": t[
        "pre_layrnorm.weight"]}, str(bad / "model.safetensors"))
    assert load_clip_vision(bad)[1].num_layers == 3
    key = "encoder.layers.1.mlp.fc1.weight"
    save_file({k: v for k, v in t.items() if k != key}, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing key.*layers.1.mlp.fc1.weight"):
        load_clip_vision(bad)
    save_file({**t, "encoder.layers.3.mlp.fc1.weight": t[key]}, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected key.*layers.3.mlp.fc1.weight"):
        load_clip_vision(bad)
    t["embeddings.patch_embedding.weight"] = t["embeddings.patch_embedding.weight"][:, :2]
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="patch_embedding.weight' has shape"):
        load_clip_vision(bad)
