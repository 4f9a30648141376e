import pytest

from jaxlm import preset, preset_names
from jaxlm.config import DecoderConfig
from jaxlm.errors import ConfigError


def test_presets_have_the_published_hyperparameters():
    amber = preset("amber-7b")
    assert (amber.hidden_size, amber.intermediate_size, amber.num_layers, amber.num_heads, amber.vocab_size) == (
        4096, 11008, 32, 32, 32000)
    assert amber.norm_eps == 1e-6 and not amber.tie_embeddings
    c = preset("crystal-7b")
    assert c is preset("crystalcoder-7b")
    assert (c.vocab_size, c.intermediate_size, c.rot_dim, c.rope_style) == (32032, 10922, 32, "interleaved")
    assert c.attn_scale_power == 1.0 and c.embed_scale == 14.6 and abs(c.logit_scale - 0.13875) < 1e-12
    assert c.tie_embeddings and c.mlp_bias and c.qkv_bias and c.norm == "layer"
    m = preset("mobillama-0.5b")
    assert m.shared_mlp and m.num_kv_heads == m.num_heads == 32 and m.intermediate_size == 5632
    assert not preset("mobillama-1b").shared_mlp and preset("mobillama-1b").hidden_size == 2048
    assert preset("mobillama-0.8b").head_dim == 80
    phi = preset("phi-1.5")
    assert phi.block == "parallel" and phi.mlp == "gelu" and phi.rot_dim == 32 and phi.lm_head_bias
    s = preset("smollm2-135m")
    assert (s.num_heads, s.num_kv_heads, s.rope_theta, s.tie_embeddings) == (9, 3, 1e5, True)


def test_parameter_counts_match_the_released_models():
    # Amber / LLaMA-7B: 6,738,415,616. MobiLlama: the fp32 05B checkpoint holds 1,261,529,088 floats (22 FFN
    # copies) = the unshared "1b" topology; with ONE shared FFN the 0.5B has 534,865,920 unique parameters
    # (the bf16 chat checkpoint is 1.07 GB). Phi-1.5: 1.418B. SmolLM2-135M: 134.5M (tied embeddings).
    assert preset("amber-7b").num_params() == 6_738_415_616
    assert preset("mobillama-1b").num_params() == 1_261_529_088
    assert preset("mobillama-0.5b").num_params() == 534_865_920
    assert preset("phi-1.5").num_params() == 1_418_270_720
    assert abs(preset("smollm2-135m").num_params() / 1e6 - 134.5) < 0.1


def test_every_preset_has_a_tiny_variant():
    names = preset_names()
    for fam in ("amber", "crystalcoder", "mobillama", "phi", "smollm2"):
        assert f"{fam}-tiny" in names


def test_unknown_preset_and_bad_fields_raise_clear_errors():
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        preset("nope")
    with pytest.raises(ConfigError, match="unknown config field"):
        preset("amber-tiny", hidden=3)
    with pytest.raises(ConfigError, match="num_kv_heads"):
        DecoderConfig(num_heads=6, num_kv_heads=4)
    with pytest.raises(ConfigError, match="rotary_dim"):
        DecoderConfig(head_dim=16, rotary_dim=7)
    with pytest.raises(ConfigError, match="family"):
        DecoderConfig(family="gpt5")


def test_one_preset_lookup_covers_every_family():
    from jaxlm.config import KINDS, Mamba2Config, PhiMambaConfig, mamba2_preset, phi_mamba_preset
    from jaxlm.models import mamba2, phi_mamba

    # the old import paths name the same objects
    assert (mamba2.Mamba2Config, mamba2.mamba2_preset) == (Mamba2Config, mamba2_preset)
    assert (phi_mamba.PhiMambaConfig, phi_mamba.phi_mamba_preset) == (PhiMambaConfig, phi_mamba_preset)
    m = preset("mamba2-tiny", chunk_size=8)
    assert isinstance(m, Mamba2Config) and m.chunk_size == 8 and m == mamba2_preset("mamba2-tiny", chunk_size=8)
    assert preset("mamba2-130m").hidden_size == 768
    h = preset("hybrid-phi-mamba-tiny")
    assert isinstance(h, PhiMambaConfig) and h.attn_layers == (1,) and h.base.num_layers == 3
    assert preset("phi-mamba-1.5b").base == preset("phi-1.5") and preset("phi-1.5").causal
    kinds = {"decoder": DecoderConfig, "mamba2": Mamba2Config, "phi_mamba": PhiMambaConfig}
    assert set(kinds) == set(KINDS)
    for kind, cls in kinds.items():
        assert preset_names(kind) and all(isinstance(preset(n), cls) for n in preset_names(kind))
    assert preset_names() == sum((preset_names(k) for k in KINDS), [])
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*'mamba2-tiny'.*'phi-mamba-tiny'"):
        preset("nope")
    with pytest.raises(ConfigError, match="unknown Mamba-2 preset 'amber-tiny'"):
        mamba2_preset("amber-tiny")
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['hidden'\] for Mamba2Config"):
        preset("mamba2-tiny", hidden=3)
    with pytest.raises(ConfigError, match="preset kind 'vit'"):
        preset_names("vit")
