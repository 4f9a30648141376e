"""Mamba2LM vs transformers' Mamba2ForCausalLM (pure-torch path) on tiny random configs; recurrent decode; export."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxlm.errors import CheckpointError
from jaxlm.io.mamba_hf import load_mamba2, save_mamba2
from jaxlm.models.mamba2 import Mamba2LM, SSMCache

TOL = 1e-4


def _hf_model(n_groups, tie, seed=0):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(seed)
    hc = Mamba2Config(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_heads=8, head_dim=8, state_size=8,
                      expand=2, n_groups=n_groups, conv_kernel=4, chunk_size=8, tie_word_embeddings=tie,
                      layer_norm_epsilon=1e-5, use_bias=n_groups > 1, eos_token_id=None)  # no early stop
    m = Mamba2ForCausalLM(hc).eval()
    with torch.no_grad():  # move every parameter away from its init so each one matters
        for name, p in m.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(("D", "dt_bias", "A_log")):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("conv1d.bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module", params=[(1, True), (2, False)], ids=["g1-tied", "g2-untied-bias"])
def hf_ckpt(request, tmp_path_factory):
    n_groups, tie = request.param
    m = _hf_model(n_groups, tie)
    d = tmp_path_factory.mktemp(f"mamba2_g{n_groups}")
    m.save_pretrained(d)
    ids = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(1))  # 21: not a multiple of 8
    with torch.no_grad():
        ref = m(ids).logits.numpy()
    return d, ids.numpy().astype(np.int32), ref, m


def test_logits_parity(hf_ckpt):
    d, ids, ref, hf = hf_ckpt
    model, cfg = load_mamba2(d)
    out = np.asarray(jax.jit(lambda i: model(i))(jnp.asarray(ids)))
    diff = float(np.abs(out - ref).max())
    print(f"Mamba2 logits max|diff| n_groups={cfg.n_groups}: {diff:.3g}")
    assert diff <= TOL, diff
    if cfg.n_groups > 1:
        # the test can tell the gated-norm grouping apart: ungrouped normalisation must NOT match transformers 5.x
        from flax import nnx

        ung = nnx.eval_shape(lambda: Mamba2LM(dataclasses.replace(cfg, grouped_norm=False)))
        nnx.update(ung, nnx.state(model))
        assert float(np.abs(np.asarray(jax.jit(lambda i: ung(i))(jnp.asarray(ids))) - ref).max()) > 10 * TOL


@pytest.mark.parametrize("hf_ckpt", [(2, False)], indirect=True, ids=["g2-untied-bias"])
def test_recurrent_decode_equals_forward(hf_ckpt):  # decode on the n_groups=2 checkpoint only (keeps the suite fast)
    d, ids, _, hf = hf_ckpt
    model, cfg = load_mamba2(d)
    assert cfg.n_groups == 2
    ids = jnp.asarray(ids)
    full = model(ids)
    cache = SSMCache.zeros(cfg, 2)
    size0 = cache.nbytes()
    fwd = jax.jit(lambda i, c: model(i, cache=c))
    logits, cache = fwd(ids[:, :6], cache)  # chunked prefill
    outs = [logits]
    for t in range(6, ids.shape[1]):  # then one token at a time (recurrent step)
        lg, cache = fwd(ids[:, t:t + 1], cache)
        outs.append(lg)
        assert cache.nbytes() == size0  # constant memory per token
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=TOL, rtol=0)
    assert int(cache.lengths[0]) == ids.shape[1]
    # greedy continuation agrees with transformers' cached generation
    with torch.no_grad():
        hf_gen = hf.generate(torch.tensor(np.asarray(ids[:, :6]), dtype=torch.long), max_new_tokens=5,
                             do_sample=False, use_cache=True, pad_token_id=0)[:, 6:].numpy()
    c = SSMCache.zeros(cfg, 2)
    lg, c = fwd(ids[:, :6], c)
    ours = []
    for _ in range(5):
        tok = jnp.argmax(lg[:, -1], -1).astype(jnp.int32)
        ours.append(np.asarray(tok))
        lg, c = fwd(tok[:, None], c)
    np.testing.assert_array_equal(np.stack(ours, 1), hf_gen)


def test_export_roundtrip_and_loads_in_transformers(hf_ckpt, tmp_path):
    from transformers import Mamba2ForCausalLM

    d, ids, ref, _ = hf_ckpt
    model, cfg = load_mamba2(d)
    save_mamba2(model, tmp_path / "out")
    again, cfg2 = load_mamba2(tmp_path / "out")
    assert cfg2 == cfg
    from flax import nnx
    for (pa, a), (pb, b) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                                nnx.to_flat_state(nnx.state(again, nnx.Param))):
        assert pa == pb and np.array_equal(np.asarray(a[...]), np.asarray(b[...])), pa
    hf = Mamba2ForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        out = hf(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    assert float(np.abs(out - ref).max()) <= TOL


def test_bad_keys_raise(hf_ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    d, *_ = hf_ckpt
    sd = load_file(d / "model.safetensors")
    cfgj = json.loads((d / "config.json").read_text())

    def write(name, tensors):
        out = tmp_path / name
        out.mkdir()
        (out / "config.json").write_text(json.dumps(cfgj))
        save_file(tensors, out / "model.safetensors")
        return out

    missing = {k: v for k, v in sd.items() if k != "backbone.layers.1.mixer.A_log"}
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.1\.mixer\.A_log"):
        load_mamba2(write("missing", missing))
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.0\.mixer\.bogus"):
        load_mamba2(write("unexpected", {**sd, "backbone.layers.0.mixer.bogus": np.zeros(3, np.float32)}))
    shaped = dict(sd)
    shaped["backbone.layers.0.mixer.D"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.0\.mixer\.D.*\[5\].*\[8\]"):
        load_mamba2(write("shape", shaped))
    with pytest.raises(CheckpointError, match="config.json"):
        load_mamba2(tmp_path / "nowhere")
