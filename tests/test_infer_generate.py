"""Generation engine: incremental decode == full forward for every family, ragged batches == solo runs, the
recurrent-state cache, the context policy, stop tokens/strings, streaming, sharded decode and the golden fixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import preset
from jaxlm.infer.generate import Generator, PromptTooLongError, bucket
from jaxlm.infer.text import ByteTokenizer
from jaxlm.models.decoder import DecoderLM

# CrystalCoder and MobiLlama are also checked below against decode logits of their original code (fixtures), so
# their random-weight variants only run with -m slow
SLOW = pytest.mark.slow
FAMILIES = [pytest.param("crystalcoder-tiny", marks=SLOW), pytest.param("mobillama-tiny", marks=SLOW), "phi-tiny",
            "smollm2-tiny", "amber-tiny"]


def tiny(name="smollm2-tiny", seed=0, **kw):
    # a larger init std than training's makes logits peaked, so greedy choices are far from ties
    cfg = preset(name, init_std=0.3, **kw)
    return DecoderLM(cfg, rngs=nnx.Rngs(seed))


def naive_greedy(model, prompt, n, width=32):
    """Reference: the full forward recomputed for every new token (jitted at one padded width; causal attention
    makes the right padding invisible), argmax at the last real position."""
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, ids: nnx.merge(graphdef, st)(ids))
    seq = list(prompt)
    for _ in range(n):
        ids = np.zeros((1, width), np.int32)
        ids[0, :len(seq)] = seq
        seq.append(int(jnp.argmax(fwd(state, jnp.asarray(ids))[0, len(seq) - 1])))
    return seq[len(prompt):]


@pytest.fixture(scope="module")
def small():
    """One model and generator shared by the tests below (same shapes -> compiled once)."""
    model = tiny("smollm2-tiny", seed=2)
    return model, Generator(model, ByteTokenizer())


@pytest.mark.parametrize("name", FAMILIES)
def test_incremental_decode_matches_full_forward(name):
    model = tiny(name, seed=1)
    ids = np.random.default_rng(0).integers(0, 256, (2, 14))
    full = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    inc = np.asarray(Generator(model).decode_logits(ids, prompt_len=9))
    assert inc.shape == (2, 6, 256)
    np.testing.assert_allclose(inc, full[:, 8:], atol=1e-4, rtol=0)


def test_ragged_batch_equals_solo_and_naive(small):
    model, g = small
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(0, 256, n)) for n in (3, 16, 9)]
    batched = g.generate_ids(prompts, max_new_tokens=12, ignore_eos=True)
    solo = [g.generate_ids([p], max_new_tokens=12, ignore_eos=True)[0] for p in prompts]
    assert batched == solo
    assert batched[1] == naive_greedy(model, prompts[1], 12)
    assert all(len(t) == 12 for t in batched)


def test_recurrent_cache_generation():
    """Mamba-2 (SSMCache: no token axis, prompts prefilled per equal-length group) through the same engine."""
    from jaxlm.models.mamba2 import Mamba2LM, mamba2_preset

    model = Mamba2LM(mamba2_preset("mamba2-tiny", init_std=0.3), rngs=nnx.Rngs(0))
    g = Generator(model)
    rng = np.random.default_rng(2)
    prompts = [list(rng.integers(0, 256, n)) for n in (4, 7, 4)]
    batched = g.generate_ids(prompts, max_new_tokens=6)
    assert batched[1] == naive_greedy(model, prompts[1], 6)
    assert batched[0] == naive_greedy(model, prompts[0], 6)
    assert batched[2] == naive_greedy(model, prompts[2], 6)  # same length as prompts[0]: one prefill group


def test_generator_follows_updated_weights():
    """nnx.update of the model's weights after a generation: the next one (prefill and the unrolled decode step's
    per-layer weight copies) uses the new weights, like a fresh Generator."""
    model, prompt = tiny("smollm2-tiny", seed=2), [[5, 17, 99, 3]]
    g = Generator(model)
    before = g.generate_ids(prompt, max_new_tokens=8, ignore_eos=True)
    nnx.update(model, nnx.state(tiny("smollm2-tiny", seed=4)))
    after = g.generate_ids(prompt, max_new_tokens=8, ignore_eos=True)
    assert after == Generator(model).generate_ids(prompt, max_new_tokens=8, ignore_eos=True)
    assert after != before


def test_context_policy(small):
    model, _ = small
    g = Generator(model, context_len=32)
    with pytest.raises(PromptTooLongError, match=r"30 tokens .* 8 new tokens .* context length is 32"):
        g.generate_ids([list(range(30))], max_new_tokens=8)
    left = Generator(model, context_len=32, truncate="left")
    long = list(np.random.default_rng(3).integers(0, 256, 40))
    out = left.generate_ids([long], max_new_tokens=8)[0]
    assert out == g.generate_ids([long[-24:]], max_new_tokens=8)[0]  # keeps the newest 32 - 8 tokens
    with pytest.raises(PromptTooLongError):
        left.generate_ids([long], max_new_tokens=32)  # nothing of the prompt would fit
    with pytest.raises(ValueError, match="max_new_tokens"):
        g.generate_ids([[1, 2]], max_new_tokens=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        g.generate_ids([[1, 999]], max_new_tokens=2)
    with pytest.raises(ValueError, match="truncate"):
        Generator(model, truncate="right")


class Latin1(ByteTokenizer):
    """Every byte is one character: random byte models produce text without replacement characters."""

    def decode(self, ids):
        return bytes(int(i) for i in ids).decode("latin-1")


def test_stop_tokens_strings_and_streaming(small):
    model, _ = small
    tok = Latin1()
    g = Generator(model, tok)
    prompt = "hello"
    ref = g.generate_ids([tok.encode(prompt)], max_new_tokens=16)[0]
    # a stop token: generation ends before it (it is not part of the output)
    cut = g.generate_ids([tok.encode(prompt)], max_new_tokens=16, stop_token_ids=[ref[5]])[0]
    assert cut == ref[:ref.index(ref[5])]
    # a stop string made of generated bytes: text ends just before it; streaming pieces add up to the same text
    full = tok.decode(ref)
    stop = full[6:8]
    text = g.generate(prompt, max_new_tokens=16, stop=[stop, "\x00never"])[0]
    assert text == full[:full.index(stop)]
    pieces = list(g.stream(prompt, max_new_tokens=16, stop=stop))
    assert "".join(pieces) == text and len(pieces) >= 2
    seen = []
    assert "".join(g.stream(prompt, max_new_tokens=16, callback=seen.append)) == full == "".join(seen)
    with pytest.raises(ValueError, match="stop"):
        g.generate(prompt, stop=[""])
    # chat messages without a template use the plain fallback rendering
    msgs = [{"role": "user", "content": "hi"}]
    assert g.generate([msgs], max_new_tokens=4) == g.generate("<|user|>\nhi\n<|assistant|>\n", max_new_tokens=4)


def test_text_stream_holds_back_partial_stop():
    from jaxlm.infer.text import TextStream

    tok = ByteTokenizer()
    s = TextStream(tok, ["END"])
    out = [s.push(b) for b in b"abEN"]
    assert "".join(out) == "ab"  # "EN" may become "END": held back
    assert s.push(ord("X")) == "ENX"
    assert s.push(ord("E")) == "" and s.push(ord("N")) == "" and s.push(ord("D")) == ""
    assert s.stopped and s.text == "abENX"
    s2 = TextStream(tok, [])
    euro = "€".encode()
    assert s2.push(euro[0]) == "" and s2.push(euro[1]) == "" and s2.push(euro[2]) == "€"


def test_sampled_generation_is_seeded_and_batch_independent(small):
    _, g = small
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    kw = dict(max_new_tokens=12, ignore_eos=True, temperature=1.5, top_k=50, top_p=0.95, min_p=0.01, repetition_penalty=1.3)
    a = g.generate_ids(prompts, seed=[11, 12], **kw)
    b = g.generate_ids(prompts, seed=[11, 12], **kw)
    assert a == b
    assert g.generate_ids([prompts[1]], seed=12, **kw)[0] == a[1]  # rows do not influence each other
    c = g.generate_ids(prompts, seed=[13, 14], **kw)
    assert c != a


def test_sharded_decode_matches_single_device(small):
    from jaxlm.errors import MeshError
    from jaxlm.sharding import make_mesh

    model, _ = small
    prompts = [[1, 2, 3, 4], [7, 8], [3] * 11, [200, 100, 50]]
    ref = Generator(model).generate_ids(prompts, max_new_tokens=8)
    mesh = make_mesh("2x2x2", jax.devices()[:8])
    g = Generator(model, mesh=mesh)
    assert g.generate_ids(prompts, max_new_tokens=8) == ref
    assert g.state["embed"].get_value().sharding.mesh.shape["tensor"] == 2
    with pytest.raises(MeshError, match="num_kv_heads=2"):  # smollm2-tiny: 2 kv heads cannot split 4 ways
        Generator(model, mesh=make_mesh("1x2x4", jax.devices()[:8]))


def test_bucket():
    assert [bucket(n, 16) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    assert bucket(3000, 16, cap=2048) == 2048


# ---- golden decode logits produced by the original PyTorch code

def _fixture(fixtures_dir, name):
    from safetensors.numpy import load_file

    from jaxlm.io import load_pretrained

    d = fixtures_dir / name
    model, cfg = load_pretrained(d)
    io = load_file(str(d / "io.safetensors"))
    return model, io


def test_crystalcoder_fixture_decode_logits(fixtures_dir):
    model, io = _fixture(fixtures_dir, "crystalcoder")
    ids = io["input_ids"]
    inc = np.asarray(Generator(model).decode_logits(ids, prompt_len=16))
    # decode_logits[:, t] are the logits after feeding input_ids[:, 16 + t]
    np.testing.assert_allclose(inc[:, 1:], io["decode_logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(inc[:, 0], io["logits"][:, 15], atol=1e-4, rtol=0)


def test_mobillama_fixture_decode_logits(fixtures_dir):
    model, io = _fixture(fixtures_dir, "mobillama")
    assert model.cfg.shared_mlp
    inc = np.asarray(Generator(model).decode_logits(io["input_ids"], prompt_len=20))
    np.testing.assert_allclose(inc[:, 1:], io["decode_logits_fp32attn"], atol=1e-4, rtol=0)
    # the reference as written rounds q, k, v and the attention output to bfloat16 (flash-attn)
    rounded = DecoderLM(model.cfg.replace(attn_bf16_round=True), rngs=nnx.Rngs(0))
    nnx.update(rounded, nnx.state(model))
    inc_b = np.asarray(Generator(rounded).decode_logits(io["input_ids"], prompt_len=20))
    np.testing.assert_allclose(inc_b[:, 1:], io["decode_logits"], atol=1e-4, rtol=0)


def test_from_pretrained_hf_dir_and_orbax_run(small, tmp_path):
    """--checkpoint accepts an HF directory (jaxlm.io.save_pretrained) and an orbax training run (jaxlm.train)."""
    import dataclasses

    from jaxlm.io import save_pretrained
    from jaxlm.train.checkpoint import Checkpointer
    from jaxlm.train.state import TrainState

    model, g = small
    want = g.generate_ids([[5, 6, 7]], max_new_tokens=12, ignore_eos=True)
    save_pretrained(model, tmp_path / "hf")
    assert Generator.from_pretrained(str(tmp_path / "hf")).generate_ids([[5, 6, 7]], max_new_tokens=12) == want
    ck = Checkpointer(tmp_path / "run" / "checkpoints", save_every=1, async_save=False)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    state = TrainState(params=params, opt_state={"mu": jnp.zeros(2)}, step=jnp.int32(3),
                       rng=jnp.zeros(2, jnp.uint32))
    ck.save(3, state, {"next_index": 0}, {"compat": {"model": dataclasses.asdict(model.cfg)}})
    ck.close()
    assert Generator.from_pretrained(str(tmp_path / "run")).generate_ids([[5, 6, 7]], max_new_tokens=12) == want
    with pytest.raises(FileNotFoundError, match="neither an HF checkpoint"):
        Generator.from_pretrained(str(tmp_path))


def byte_tokenizer_json(out_dir):
    """A real tokenizer.json for the 256-token test models: byte-level BPE without merges (one token per byte)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.save(str(out_dir / "tokenizer.json"))


def test_generate_cli(small, tmp_path, capsys):
    from jaxlm.generate import main
    from jaxlm.io import save_pretrained
    from jaxlm.io.tokenizer import Tok

    model, _ = small
    save_pretrained(model, tmp_path)
    byte_tokenizer_json(tmp_path)
    tok = Tok.from_dir(tmp_path)
    assert tok.decode(tok.encode("héllo")) == "héllo"
    want = Generator(model, tok).generate("hello", max_new_tokens=12)[0]
    assert main(["--checkpoint", str(tmp_path), "hello", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert main(["--checkpoint", str(tmp_path), "hello", "--top-p", "2"]) == 2
    assert "top_p=2.0" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing"), "hello"]) == 2
