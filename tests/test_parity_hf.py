"""Parity with transformers' LlamaForCausalLM / PhiForCausalLM on tiny random configs, and exact round trips.

float32 everywhere; tolerance max |Δlogit| <= 1e-4 (CPU matmul summation-order noise between torch and XLA is
~1e-6 at these sizes).
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

from jaxlm.io import load_pretrained, save_pretrained
from jaxlm.io.hf import flat_params

ATOL = 1e-4
IDS = np.random.default_rng(0).integers(0, 256, size=(2, 24)).astype(np.int32)


def _llama(tmp_path, kv_heads, tie=False, bias=False):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=tie, attention_bias=bias)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms so a wrong norm wiring shows
        for n, p in m.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(tmp_path)
    return m


def _phi(tmp_path):
    torch.manual_seed(1)
    cfg = PhiConfig(vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=128)
    m = PhiForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "layernorm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(tmp_path)
    return m


def _torch_logits(m, ids=IDS):
    with torch.no_grad():
        return m(torch.from_numpy(ids.astype(np.int64))).logits.numpy()


@pytest.mark.parametrize("kv_heads,tie,bias", [(4, False, False), (2, False, False), (2, True, True)],
                         ids=["amber-shape-mha", "gqa", "gqa-tied-bias"])
def test_llama_parity_and_round_trip(tmp_path, kv_heads, tie, bias):
    ref = _llama(tmp_path / "hf", kv_heads, tie, bias)
    model, cfg = load_pretrained(tmp_path / "hf")
    assert cfg.family == "llama" and cfg.num_kv_heads == kv_heads and cfg.tie_embeddings == tie
    ours = np.asarray(model(jnp.asarray(IDS)))
    want = _torch_logits(ref)
    assert np.abs(ours - want).max() <= ATOL

    # export -> import is bit-exact, and transformers loads the export with the same logits
    save_pretrained(model, tmp_path / "out")
    again, cfg2 = load_pretrained(tmp_path / "out")
    assert cfg2 == cfg
    for k, v in flat_params(model).items():
        np.testing.assert_array_equal(flat_params(again)[k], v, err_msg=k)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert np.abs(_torch_logits(reloaded) - want).max() <= ATOL
    # the export carries the original tensors bit-exactly
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_phi_parity_and_round_trip(tmp_path):
    ref = _phi(tmp_path / "hf")
    model, cfg = load_pretrained(tmp_path / "hf")
    assert cfg.family == "phi" and cfg.block == "parallel" and cfg.rot_dim == 8
    want = _torch_logits(ref)
    assert np.abs(np.asarray(model(jnp.asarray(IDS))) - want).max() <= ATOL
    save_pretrained(model, tmp_path / "out")
    reloaded = PhiForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert np.abs(_torch_logits(reloaded) - want).max() <= ATOL
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sharded_export_with_index(tmp_path):
    ref = _llama(tmp_path / "hf", 2)
    model, cfg = load_pretrained(tmp_path / "hf")
    save_pretrained(model, tmp_path / "sharded", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2 and all((tmp_path / "sharded" / f).exists() for f in files)
    again, _ = load_pretrained(tmp_path / "sharded")
    np.testing.assert_array_equal(np.asarray(again(jnp.asarray(IDS))), np.asarray(model(jnp.asarray(IDS))))
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    assert np.abs(_torch_logits(hf) - _torch_logits(ref)).max() == 0.0


@pytest.mark.parametrize("fixture,layout", [("crystalcoder", "per_layer"), ("mobillama", "per_layer"),
                                            ("mobillama", "once")])
def test_original_layout_round_trips_bit_exactly(fixtures_dir, tmp_path, fixture, layout):
    src = fixtures_dir / fixture
    model, cfg = load_pretrained(src)
    save_pretrained(model, tmp_path, mlp_layout=layout)
    orig, out = load_file(src / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    skip = ("rotary_emb.inv_freq",)
    expect = {k for k in orig if not k.endswith(skip)}
    if layout == "once":
        expect = {k for k in expect if ".mlp." not in k or k.startswith("model.layers.0.")}
    assert set(out) == expect  # CrystalCoder: both transformer.wte.weight and lm_head.weight, like the release
    for k in out:
        np.testing.assert_array_equal(out[k], orig[k], err_msg=k)
    again, cfg2 = load_pretrained(tmp_path)
    assert cfg2 == cfg
