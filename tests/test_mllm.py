"""The LLaVA-style MLLM: shapes, the image spliced at the `<image>` tag, answer-only loss masking, the two stages on
the shared engine (stage 1 changes only the projector, stage 2 the projector and the LLM; the vision tower never), and
generation with the image at the tag."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import preset, vit_preset
from jaxlm.data.corpus import EOS_TOKEN, train_bpe
from jaxlm.errors import DataError
from jaxlm.io.tokenizer import HFTokenizer
from jaxlm.models.mllm import MLLM, MLLMConfig, splice_image, splice_targets
from jaxlm.web.mllm import (MLLMGenerator, MLLMTask, StagedArrays, encode_example, encode_examples, llava_phases,
                            prompt_text, split_at_image)
from jaxlm.train.task import token_nll

TEXTS = ["<html><body><h1>Hello world</h1><p>Some text about bread.</p></body></html>",
         "Please generate html code for the given image.", "Does the webpage have a table? Yes No"] * 4
CFG = MLLMConfig(vit_preset("vit-tiny", image_size=16, hidden_size=32, num_heads=2, intermediate_size=64,
                            num_layers=1),
                 preset("smollm2-tiny", vocab_size=320, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16,
                        intermediate_size=64, num_layers=1))


@pytest.fixture(scope="module")
def tok():
    tk = train_bpe(TEXTS, 320)
    return HFTokenizer(tk, eos_id=tk.token_to_id(EOS_TOKEN))


def _data(tok, n=4, T=80, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, 16, 16, 3)).astype(np.float32)
    recs = [("Please generate html code for the given image.", TEXTS[0][: 20 + 5 * i], i) for i in range(n)]
    return encode_examples(tok, recs, images, T)[0]


def test_encode_masks_all_but_the_answer(tok):
    q, a = "Does the webpage have a table?", "Yes"
    x, y, cut = encode_example(tok, q, a, 64)
    p = tok.encode(prompt_text(tok, q))
    ans = list(tok.encode(a)) + [tok.eos_id]
    assert not cut and (y >= 0).sum() == len(ans) and list(y[y >= 0]) == ans
    assert list(x[:len(p)]) == p and y[len(p) - 2] == -1 and y[len(p) - 1] == ans[0]
    _, y2, cut2 = encode_example(tok, q, TEXTS[0] * 3, 48)
    assert cut2 and y2[-1] >= 0
    with pytest.raises(DataError, match="leaves no room for the answer"):
        encode_example(tok, q, a, 4)


def test_shapes_and_answer_only_loss(tok):
    gdef, st = nnx.split(MLLM(CFG, rngs=nnx.Rngs(0)))
    N = CFG.num_image_tokens

    @jax.jit
    def run(st, b, noise):  # one compile: logits, the task's loss, the loss with the prompt's logits perturbed
        model = nnx.merge(gdef, st)
        logits = model(b["images"], b["inputs"], b["image_pos"])
        tgt = splice_targets(b["targets"], b["image_pos"], N)
        tot, cnt, _ = MLLMTask(CFG).loss(model, b, jax.random.key(0))
        m = (tgt >= 0)[..., None]
        noisy = token_nll(logits + jnp.where(m, 0.0, noise), tgt)[0].sum()
        other = model(-b["images"], b["inputs"], b["image_pos"])
        prefix = model(b["images"], b["inputs"])  # image_pos None: the image first
        at0 = model(b["images"], b["inputs"], jnp.zeros_like(b["image_pos"]))
        return logits, tgt, tot, cnt, token_nll(logits, tgt)[0].sum(), noisy, other, prefix, at0

    b = _data(tok)
    noise = 5.0 * np.random.default_rng(1).normal(size=(4, N + 80, 320)).astype(np.float32)
    logits, tgt, tot, cnt, manual, noisy, other, prefix, at0 = run(st, {k: b[k] for k in MLLMTask.batch_spec}, noise)
    p = len(split_at_image(tok, "Please generate html code for the given image.")[0])
    assert N == 4 and logits.shape == (4, N + 80, 320) and p > 0 and list(b["image_pos"]) == [p] * 4
    assert float(cnt) == float((b["targets"] >= 0).sum()) and np.isclose(float(tot), float(manual), rtol=1e-6)
    # only answer positions count: changing the prompt's and the image's logits leaves the loss unchanged
    assert np.isclose(float(noisy), float(tot), rtol=1e-6)
    # the image matters: another image changes the answer logits
    m = np.asarray(tgt >= 0)
    assert np.abs(np.asarray(other - logits)[m]).max() > 1e-4
    np.testing.assert_allclose(np.asarray(prefix), np.asarray(at0), atol=1e-5)  # prefix mode = a splice at 0


def test_splice_at_the_tag_equals_concatenation():
    rng = np.random.default_rng(0)
    tok_e, img_e = rng.normal(size=(3, 7, 5)).astype(np.float32), rng.normal(size=(3, 4, 5)).astype(np.float32)
    pos = np.asarray([0, 3, 7])
    got = np.asarray(splice_image(jnp.asarray(tok_e), jnp.asarray(img_e), pos))
    for b, p in enumerate(pos):
        np.testing.assert_array_equal(got[b], np.concatenate([tok_e[b, :p], img_e[b], tok_e[b, p:]]))
    ids = rng.integers(0, 50, (3, 7))
    targets = np.where(rng.uniform(size=(3, 7)) < 0.8, np.roll(ids, -1, 1), -1)
    targets[:, -1] = -1  # the last token has no next one
    st = np.asarray(splice_targets(jnp.asarray(targets), pos, 4))
    for b, p in enumerate(pos):
        # the spliced sequence's next-token pairs are the text's, the image tokens are never a target
        seq = [("t", t) for t in ids[b, :p]] + [("i", k) for k in range(4)] + [("t", t) for t in ids[b, p:]]
        want = [(seq[j], seq[j + 1][1]) for j in range(len(seq) - 1) if seq[j + 1][0] == "t"]
        text_tg = {j: int(targets[b, j]) for j in range(7) if targets[b, j] >= 0}
        got_pairs = [(seq[j], int(st[b, j])) for j in range(11) if st[b, j] >= 0]
        assert len(got_pairs) == len(text_tg) and all(pair in want for pair in got_pairs)
        assert all(st[b, j] == -1 for j in range(max(p - 1, 0), p + 3))


def test_stage_masks_select_projector_then_projector_and_llm():
    from jaxlm.train import OptimConfig, RunConfig
    from jaxlm.train.optim import path_str, phase_masks
    from jaxlm.train.state import abstract_params

    _, params = abstract_params(MLLMTask(CFG))
    for vis, first in ((False, {"projector"}), (True, {"projector", "vision"})):
        run = RunConfig(model=None, optim=OptimConfig(), phases=llava_phases(10, 20, vision_in_stage1=vis))
        assert [p.lr.warmup for p in run.phases] == [1, 1] and run.phases[1].lr.peak == 2e-5
        for mask, want in zip(phase_masks(run, params), (first, {"projector", "llm"})):
            live = {path_str(p).split("/")[0] for p, v in jax.tree_util.tree_leaves_with_path(mask) if v}
            dead = {path_str(p).split("/")[0] for p, v in jax.tree_util.tree_leaves_with_path(mask) if not v}
            assert live == want and not live & dead


@pytest.mark.slow
def test_stages_on_the_engine_and_generation(tok, tmp_path):
    """Two engine runs (stage 1 to its end, then resumed through stage 2): the frozen parts are bit-unchanged."""
    from jaxlm.sharding import make_mesh
    from jaxlm.train import OptimConfig, RunConfig, TrainConfig, train
    from jaxlm.train.state import abstract_model

    b = _data(tok)
    start = MLLM(CFG, rngs=nnx.Rngs(0))
    flat = lambda d: {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.traversals.flatten_mapping(d).items()}  # noqa
    ref = flat(nnx.to_pure_dict(nnx.state(start, nnx.Param)))
    task = MLLMTask(CFG, start=lambda: start)
    run = RunConfig(name="mllm", model=None, optim=OptimConfig(weight_decay=0.0),
                    train=TrainConfig(global_batch=4, seq_len=80, log_every=100, eval_batches=0, ckpt_every=100,
                                      async_ckpt=False),
                    phases=llava_phases(2, 2, stage1_lr=1e-2, stage2_lr=1e-2))
    mesh = make_mesh("1x1", devices=jax.devices()[:1])
    pipe = StagedArrays([(2, b), (2, b)], 4)

    def changed(params):
        got = flat(jax.device_get(params))
        return {k.split("/")[0] for k in ref if not np.array_equal(ref[k], got[k])}

    quiet = dict(progress=False, print_fn=lambda *a: None, plot=False)
    r1 = train(run, pipe, mesh, tmp_path, task=task, stop_at=2, **quiet)
    assert changed(r1.state.params) == {"projector"}
    r2 = train(run, pipe, mesh, tmp_path, task=task, resume=True, **quiet)
    assert changed(r2.state.params) == {"projector", "llm"}
    # generation with the image at the tag: greedy's first token is the full forward's argmax after the prompt
    mdef, _, _ = abstract_model(task)
    model = mdef.merge(jax.device_get(r2.state.params), jax.device_get(r2.rest))
    gen = MLLMGenerator(model, tok, batch=2)
    q = "Please generate html code for the given image."
    before, after = split_at_image(tok, q)
    pre = np.concatenate([gen.token_embeds(before), gen.features(b["images"][:1])[0]])
    out = gen.gen.generate_ids([after], 1, prefix_embeds=[pre])
    full = model(b["images"][:1], np.asarray([before + after]), np.asarray([len(before)]))
    assert out[0][0] == int(np.argmax(np.asarray(full)[0, -1]))
    texts = gen.generate([q] * 3, b["images"][:3], max_new_tokens=4)
    assert len(texts) == 3 and texts == gen.generate([q] * 3, b["images"][:3], max_new_tokens=4)


def test_multi_turn_targets_and_staged_batches(tok):
    from jaxlm.web.mllm import encode_turns

    turns = [("Does the webpage have a table?", "Yes"), ("Does the webpage have a form?", "No")]
    x, y, cut = encode_turns(tok, turns, 96)
    want = []
    for q, a in turns:
        want += list(tok.encode(a)) + [tok.eos_id]
    assert not cut and list(y[y >= 0]) == want  # both answers (and their EOS) are learnt, nothing else
    a = {"v": np.arange(8)}
    b1, b2 = {"v": np.arange(100, 104)}, {"v": np.arange(200, 204)}
    pipe = StagedArrays([(2, a), (4, [b1, b2])], 4, seed=0)
    got = [pipe.next()["v"] for _ in range(6)]
    assert all(g.max() < 8 for g in got[:2]) and [int(g.min()) // 100 for g in got[2:]] == [1, 2, 1, 2]
    pipe.set_state({"step": 3})
    np.testing.assert_array_equal(pipe.next()["v"], got[3])


def test_a_bos_adding_tokenizer_puts_bos_only_at_the_start():
    """Llama-family tokenizers add BOS on every encode: the text after the image and the answer must not get one."""
    tk = train_bpe(TEXTS, 320)
    bos = 1  # a special (FIM) token that plain text never produces
    bos_tok = HFTokenizer(tk, eos_id=tk.token_to_id(EOS_TOKEN), bos_id=bos, add_bos=True, parse_special=True)
    pre, post = split_at_image(bos_tok, "Please generate html code for the given image.")
    assert pre[0] == bos and post and bos not in post + pre[1:]
    x, y, _ = encode_example(bos_tok, "Does the webpage have a table?", "Yes", 64)
    assert x[0] == bos and bos not in list(x[1:]) and bos not in list(y)


def test_generator_token_embeddings_follow_a_model_update(tok):
    model = MLLM(CFG, rngs=nnx.Rngs(0))
    gen = MLLMGenerator(model, tok, batch=1)
    ids = tok.encode("Hello world")
    np.testing.assert_array_equal(gen.token_embeds(ids), np.asarray(model.llm.embed.get_value())[ids])
    model.llm.embed.set_value(model.llm.embed.get_value() * 2.0)  # an in-place update (an optimizer, nnx.update)
    np.testing.assert_array_equal(gen.token_embeds(ids), np.asarray(model.llm.embed.get_value())[ids])
