"""Phi-Mamba vs the golden fixtures of goombalab/phi-mamba (shared/fixtures/phi_mamba); hybrid; checkpoint IO."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.io.mamba_hf import load_phi_mamba, save_phi_mamba
from jaxlm.models.phi_mamba import PhiMambaLM, phi_mamba_preset

TOL = 1e-4


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    from safetensors.numpy import load_file

    d = fixtures_dir / "phi_mamba"
    model, cfg = load_phi_mamba(d)
    return d, model, cfg, load_file(d / "io.safetensors")


def _maxdiff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_fixture_parity(golden):
    _, model, cfg, io = golden
    assert cfg.base.vocab_size == 256 and cfg.heads == 4 and cfg.d_state == 16 and cfg.chunk_size == 128
    ids = jnp.asarray(io["input_ids"])
    logits, outs, mats = jax.jit(lambda i: model.mixer_outputs(i))(ids)
    diffs = {
        "logits": _maxdiff(logits, io["logits"]),
        "mixer_output_layer0": _maxdiff(outs[0], io["mixer_output_layer0"]),
        "mixer_outputs": _maxdiff(outs, io["mixer_outputs"]),
        "mixer_matrix_layer0": _maxdiff(mats[0], io["mixer_matrix_layer0"]),
        "mixer_matrices": _maxdiff(mats, io["mixer_matrices"]),
    }
    blk = model.layers[0]
    h0 = blk.attn_norm(jnp.asarray(io["embedding_output"]))
    diffs["mixer_input_layer0"] = _maxdiff(h0, io["mixer_input_layer0"])
    diffs["mixer_x_layer0"] = _maxdiff(blk.mixer.post_conv_x(h0), io["mixer_x_layer0"])
    _, ins, _ = model(ids, return_hidden=True)
    diffs["embedding_output"] = _maxdiff(ins[0], io["embedding_output"])
    print("Phi-Mamba fixture max|diff|:", {k: f"{v:.3g}" for k, v in diffs.items()})
    for k, v in diffs.items():
        assert v <= TOL, (k, v)


def test_recurrent_step_equals_forward(golden):
    _, model, _, io = golden
    ids = jnp.asarray(io["input_ids"])[:, :10]
    full = jax.jit(lambda i: model(i))(ids)
    states = model.init_state(ids.shape[0])
    step = jax.jit(lambda t, s: model.step(t, s))
    outs = []
    for t in range(ids.shape[1]):
        lg, states = step(ids[:, t], states)
        outs.append(lg)
    assert _maxdiff(jnp.stack(outs, 1), full) <= TOL


def test_roundtrip_bit_exact(golden, tmp_path):
    from safetensors.numpy import load_file

    d, model, cfg, _ = golden
    save_phi_mamba(model, tmp_path / "out")
    a, b = load_file(d / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    again, cfg2 = load_phi_mamba(tmp_path / "out")
    assert cfg2 == cfg


def test_hybrid_attention_layers(tmp_path):
    cfg = phi_mamba_preset("hybrid-phi-mamba-tiny")
    model = PhiMambaLM(cfg, rngs=nnx.Rngs(1))
    assert [blk.is_attention for blk in model.layers] == [False, True, False]
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 9)), jnp.int32)
    gdef, state = nnx.split(model)
    run = jax.jit(lambda s, i: nnx.merge(gdef, s).mixer_outputs(i))
    logits, outs, mats = run(state, ids)
    assert logits.shape == (2, 9, 256) and outs.shape == (3, 2, 9, 64) and mats.shape == (3, 2, 4, 9, 9)
    assert bool(jnp.isfinite(logits).all())
    # layer 1 is softmax attention: causal, rows sum to one; the SSM layers are causal too
    np.testing.assert_allclose(mats[1].sum(-1), 1.0, atol=1e-5)
    assert float(jnp.abs(jnp.triu(mats, 1)).max()) == 0.0
    # the attention layer really is used: changing its output projection changes the logits
    o = model.layers[1].attn.o.kernel
    o[...] = o[...] + 0.2 * jax.random.normal(jax.random.key(0), o[...].shape)
    after = run(nnx.state(model), ids)[0]
    assert _maxdiff(after, logits) > 1e-3
    save_phi_mamba(model, tmp_path / "hyb")
    again, cfg2 = load_phi_mamba(tmp_path / "hyb")
    assert cfg2.attn_layers == (1,) and _maxdiff(run(nnx.state(again), ids)[0], after) == 0.0
    with pytest.raises(ConfigError, match="attn_layers"):
        phi_mamba_preset("hybrid-phi-mamba-tiny", attn_layers=(5,))
    with pytest.raises(ConfigError, match="hybrid"):
        model.init_state(2)


def test_bad_keys_raise(golden, tmp_path):
    from safetensors.numpy import load_file, save_file

    d, *_ = golden
    sd = load_file(d / "model.safetensors")

    def write(name, tensors):
        out = tmp_path / name
        out.mkdir()
        shutil.copy(d / "config.json", out / "config.json")
        save_file(tensors, out / "model.safetensors")
        return out

    with pytest.raises(CheckpointError, match=r"backbone\.layers\.0\.mixer\.z_bias"):
        load_phi_mamba(write("missing", {k: v for k, v in sd.items() if k != "backbone.layers.0.mixer.z_bias"}))
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.1\.mixer\.extra"):
        load_phi_mamba(write("unexpected", {**sd, "backbone.layers.1.mixer.extra": np.ones(2, np.float32)}))
    bad = dict(sd)
    bad["backbone.layers.1.mixer.conv1d.weight"] = np.zeros((192, 1, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"conv1d\.weight.*\[192, 1, 3\].*\[192, 1, 4\]"):
        load_phi_mamba(write("shape", bad))
    cfgd = json.loads((d / "config.json").read_text())
    del cfgd["MixerModel"]["input"]["d_model"]
    out = write("cfg", sd)
    (out / "config.json").write_text(json.dumps(cfgd))
    with pytest.raises(ConfigError, match="d_model"):
        load_phi_mamba(out)
