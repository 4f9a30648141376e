"""Bad checkpoints fail with one clear error naming the key / shape / file, before anything is built."""

import json
import shutil

import pytest
from safetensors.numpy import load_file, save_file

from jaxlm import preset
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.io import load_pretrained
from jaxlm.io.gguf import load_gguf, read_gguf


@pytest.fixture
def crystal_copy(fixtures_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(fixtures_dir / "crystalcoder", d)
    (d / "io.safetensors").unlink()
    return d


def _edit(d, fn):
    sd = load_file(d / "model.safetensors")
    fn(sd)
    save_file(sd, d / "model.safetensors")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_pretrained(tmp_path / "empty")


def test_missing_key_is_named(crystal_copy):
    _edit(crystal_copy, lambda sd: sd.pop("transformer.h.1.mlp.c_fc2.bias"))
    with pytest.raises(CheckpointError, match=r"missing key transformer\.h\.1\.mlp\.c_fc2\.bias \(expected shape \[170\]\)"):
        load_pretrained(crystal_copy)


def test_unexpected_key_is_named_but_buffers_are_ignored(crystal_copy):
    import numpy as np

    def add(sd):
        sd["transformer.h.0.attn.bias"] = np.ones((1, 1, 4, 4), np.float32)  # the causal-mask buffer: ignored
        sd["transformer.h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
        sd["transformer.h.0.extra.weight"] = np.ones(3, np.float32)
    _edit(crystal_copy, add)
    with pytest.raises(CheckpointError, match=r"unexpected key transformer\.h\.0\.extra\.weight") as e:
        load_pretrained(crystal_copy)
    assert "masked_bias" not in str(e.value) and "attn.bias" not in str(e.value)


def test_misshaped_key_is_named(crystal_copy):
    _edit(crystal_copy, lambda sd: sd.__setitem__("transformer.h.0.attn.c_attn.weight",
                                                  sd["transformer.h.0.attn.c_attn.weight"][:, :96]))
    with pytest.raises(CheckpointError, match=r"c_attn\.weight: shape \[64, 96\] but the config expects \[64, 192\]"):
        load_pretrained(crystal_copy)


def test_config_that_does_not_match_the_checkpoint(crystal_copy):
    conf = json.loads((crystal_copy / "config.json").read_text())
    conf["n_inner"] = 128
    (crystal_copy / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match=r"mlp\.c_fc\.weight: shape \[64, 170\] but the config expects \[64, 128\]"):
        load_pretrained(crystal_copy)


def test_expected_config_mismatch_names_fields(fixtures_dir):
    with pytest.raises(ConfigError, match="num_layers: config has 2, checkpoint has 3"):
        load_pretrained(fixtures_dir / "mobillama", expect=preset("mobillama-tiny", num_heads=4, head_dim=16))


def test_tied_duplicate_must_match(crystal_copy):
    _edit(crystal_copy, lambda sd: sd.__setitem__("lm_head.weight", sd["lm_head.weight"] * 2))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from the tied embedding"):
        load_pretrained(crystal_copy)


def test_unknown_family(tmp_path, crystal_copy):
    conf = json.loads((crystal_copy / "config.json").read_text())
    conf["model_type"], conf["architectures"] = "gpt_neox", ["GPTNeoXForCausalLM"]
    (crystal_copy / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match="cannot tell the model family from model_type='gpt_neox'"):
        load_pretrained(crystal_copy)
    with pytest.raises(ConfigError, match="family='gpt'"):
        load_pretrained(crystal_copy, family="gpt")


def test_bad_gguf(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="x.gguf: not a readable GGUF"):
        read_gguf(f)
    with pytest.raises(CheckpointError, match="GGUF file not found"):
        load_gguf(tmp_path / "missing.gguf")


def test_logit_checker_cli(fixtures_dir, capsys):
    from jaxlm.tools.logit_check import main

    d = fixtures_dir / "crystalcoder"
    assert main(["--checkpoint", str(d), "--golden", str(d / "io.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "max_abs_diff" in out and "mean_kl" in out and "PASS" in out
    m = fixtures_dir / "mobillama"
    # plain logits include the reference's bf16 attention rounding: float32 attention is ~1e-2 away -> exit 1
    assert main(["--checkpoint", str(m), "--golden", str(m / "io.safetensors")]) == 1
    assert main(["--checkpoint", str(m), "--golden", str(m / "io.safetensors"), "--logits-key", "logits_fp32attn"]) == 0
    assert main(["--checkpoint", str(m), "--golden", str(m / "io.safetensors"),
                 "--override", "attn_bf16_round=true"]) == 0
    assert main(["--checkpoint", str(m), "--golden", str(m / "io.safetensors"), "--logits-key", "nope"]) == 2
    assert "has no array 'nope'" in capsys.readouterr().err
    assert main(["--checkpoint", str(m), "--golden", str(m / "io.safetensors"), "--family", "bogus"]) == 2
