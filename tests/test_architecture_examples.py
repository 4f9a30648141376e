"""The worked example of docs/architecture.md, "Adding a model family": Qwen2's HF layout is the Llama layout with
biases on q/k/v only. Adding it is data — a `Family` registered with `register_family` — not a new model class;
the test checks the new family against transformers' own Qwen2ForCausalLM (float32, max |Δlogit| <= 1e-4, the
tolerance of tests/test_parity_hf.py) and that export -> import is exact. (The worked example of "Adding a Task" is
tests/test_engine_task.py.)"""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from jaxlm.config import DecoderConfig
from jaxlm.errors import ConfigError
from jaxlm.io import load_model, save_pretrained
from jaxlm.io.families import FAMILY_LAYOUTS, Family, register_family
from jaxlm.io.hf import flat_params

ATOL = 1e-4


# ---- the example (docs/architecture.md shows these lines) -------------------------------------------------------
def qwen2_from_hf(c: dict, family: str = "qwen2") -> DecoderConfig:
    llama = FAMILY_LAYOUTS["llama"]
    base = llama.from_hf({**c, "attention_bias": False})       # Llama's reading of every shared field
    return dataclasses.replace(base, family=family, qkv_bias=True, out_bias=False)


def qwen2_to_hf(cfg: DecoderConfig) -> dict:
    out = FAMILY_LAYOUTS["llama"].to_hf(dataclasses.replace(cfg, qkv_bias=False))
    out.pop("attention_bias")
    return {**out, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}


def qwen2_check(cfg: DecoderConfig):
    if not cfg.qkv_bias or cfg.out_bias:
        raise ConfigError("family='qwen2' has biases on q/k/v and none on the output projection")


QWEN2 = Family("qwen2", FAMILY_LAYOUTS["llama"].rules, qwen2_from_hf, qwen2_to_hf, qwen2_check,
               FAMILY_LAYOUTS["llama"].ignore)
# -------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2_family():
    register_family(QWEN2, detect=lambda c: c.get("model_type") == "qwen2")
    yield QWEN2
    FAMILY_LAYOUTS.pop("qwen2", None)
    register_family(FAMILY_LAYOUTS["llama"])  # drops the qwen2 detector


def test_new_family_matches_transformers_and_round_trips(tmp_path, qwen2_family):
    torch.manual_seed(0)
    hf_cfg = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)
    ref = Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # non-zero biases and norms so a mis-wired bias shows
        for n, p in ref.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "hf")

    model, cfg, _ = load_model(tmp_path / "hf", tokenizer=False)
    assert cfg.family == "qwen2" and cfg.qkv_bias and not cfg.out_bias and cfg.num_kv_heads == 2
    ids = np.random.default_rng(0).integers(0, 256, size=(2, 24)).astype(np.int32)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    got = np.asarray(model(ids))
    assert np.abs(got - want).max() <= ATOL

    save_pretrained(model, tmp_path / "out")
    again, cfg2, _ = load_model(tmp_path / "out", tokenizer=False)
    assert cfg2 == cfg
    a, b = flat_params(model), flat_params(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    back = Qwen2ForCausalLM.from_pretrained(tmp_path / "out").eval()  # transformers reads our export
    with torch.no_grad():
        assert np.abs(back(torch.from_numpy(ids.astype(np.int64))).logits.numpy() - want).max() <= ATOL


def test_register_family_rejects_non_family():
    with pytest.raises(ConfigError, match="Family"):
        register_family({"name": "x"})
