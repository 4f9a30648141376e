"""Logit parity with golden outputs of the ORIGINAL PyTorch code (../shared/fixtures), float32.

Tolerances: the fixture READMEs measure float64-vs-float32 noise of ~3e-7 (CrystalCoder) and ~1.8e-6
(MobiLlama); we require max |diff| <= 1e-4 and observe ~2e-7 and ~1.6e-6.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxlm.errors import CheckpointError
from jaxlm.io import load_pretrained
from jaxlm.io.hf import build_model, flat_params
from jaxlm.models import KVCache

ATOL = 1e-4


@functools.partial(jax.jit, static_argnums=(0, 4))
def _call(graphdef, state, ids, cache, return_hidden):
    kw = ({"cache": cache} if cache is not None else {}) | ({"return_hidden": True} if return_hidden else {})
    return nnx.merge(graphdef, state)(ids, **kw)


def jitted(model):
    """model's own call, jitted: whole programs compiled once per model structure and shape (the two MobiLlama
    layouts load the same structure and share them) instead of op-by-op dispatch through the layers."""
    graphdef, state = nnx.split(model)
    return lambda ids, cache=None, return_hidden=False: _call(graphdef, state, ids, cache, return_hidden)


def _decode(model, ids, prompt_len, steps):
    call = jitted(model)
    cache = KVCache.zeros(model.cfg, ids.shape[0], prompt_len + steps + 4)
    _, cache = call(ids[:, :prompt_len], cache=cache)
    outs = []
    for t in range(steps):
        lg, cache = call(ids[:, prompt_len + t:prompt_len + t + 1], cache=cache)
        outs.append(lg)
    return np.asarray(jnp.concatenate(outs, axis=1))


def test_crystalcoder_matches_original_code(fixtures_dir):
    d = fixtures_dir / "crystalcoder"
    model, cfg = load_pretrained(d)
    assert cfg.family == "crystalcoder" and cfg.rope_style == "interleaved" and cfg.rot_dim == 8
    io = load_file(d / "io.safetensors")
    ids = jnp.asarray(io["input_ids"])
    logits, _, hiddens, _ = jitted(model)(ids, return_hidden=True)
    np.testing.assert_allclose(np.asarray(hiddens[0]), io["embedding_output"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(hiddens[1]), io["layer_outputs"][0], atol=ATOL)
    assert np.abs(np.asarray(logits) - io["logits"]).max() <= ATOL
    assert np.abs(_decode(model, ids, 16, 4) - io["decode_logits"]).max() <= ATOL


@pytest.mark.parametrize("layout", ["model.safetensors", "model_dedup.safetensors"])
def test_mobillama_both_checkpoint_layouts(fixtures_dir, layout):
    d = fixtures_dir / "mobillama"
    model, cfg = load_pretrained(d / layout)
    assert cfg.family == "mobillama" and cfg.shared_mlp and cfg.num_kv_heads == cfg.num_heads == 4
    # one set of FFN parameters in memory, not one per layer
    params = flat_params(model)
    assert "shared_mlp.gate.kernel" in params and not any(k.startswith("layers.mlp.") for k in params)
    io = load_file(d / "io.safetensors")
    ids = jnp.asarray(io["input_ids"])
    assert np.abs(np.asarray(jitted(model)(ids)) - io["logits_fp32attn"]).max() <= ATOL
    assert np.abs(_decode(model, ids, 20, 4) - io["decode_logits_fp32attn"]).max() <= ATOL
    # the reference as written rounds q, k, v and the attention output to bfloat16 (flash-attn)
    bf = build_model(dataclasses.replace(cfg, attn_bf16_round=True), params)
    assert np.abs(np.asarray(jitted(bf)(ids)) - io["logits"]).max() <= ATOL
    assert np.abs(_decode(bf, ids, 20, 4) - io["decode_logits"]).max() <= ATOL


def test_mobillama_differing_ffn_copies(fixtures_dir, tmp_path):
    d = fixtures_dir / "mobillama"
    sd = load_file(d / "model.safetensors")
    sd["model.layers.2.mlp.up_proj.weight"] = sd["model.layers.2.mlp.up_proj.weight"] + 1e-3
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.mlp\.up_proj\.weight differs"):
        load_pretrained(tmp_path, shared_mlp=True)
    # without the requirement, differing copies mean one FFN per block (the "1b" layout)
    model, cfg = load_pretrained(tmp_path)
    assert cfg.family == "mobillama" and not cfg.shared_mlp
    np.testing.assert_array_equal(np.asarray(model.layers.mlp.up.kernel[2]),
                                  sd["model.layers.2.mlp.up_proj.weight"].T)
