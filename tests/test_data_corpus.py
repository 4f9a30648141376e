"""The embedded default corpus (Python's bundled docs and standard-library sources) and its BPE tokenizer."""

import ast
import os

import numpy as np
import pytest

from jaxlm.data import default_tokenizer, embedded_corpus, open_source, train_bpe
from jaxlm.data import corpus as corpus_lib
from jaxlm.data.sources import DataError


@pytest.fixture(scope="module")
def texts():
    tr, ho = embedded_corpus("train"), embedded_corpus("heldout")
    return {(n, s): open_source(src[n]).texts for s, src in (("train", tr), ("heldout", ho)) for n in src}


def test_corpus_is_real_nonempty_and_split(texts):
    for key, docs in texts.items():
        assert docs and all(d for d in docs), key
    assert sum(map(len, texts["code", "train"])) > 1_000_000
    assert sum(map(len, texts["language", "train"])) > 300_000
    assert len(texts["language", "heldout"]) >= 10 and len(texts["code", "heldout"]) >= 5
    # code is real Python; the language documents are prose, not Python
    for d in texts["code", "train"][:40] + texts["code", "heldout"]:
        ast.parse(d)
    prose = 0
    for d in texts["language", "train"]:
        try:
            ast.parse(d)
        except SyntaxError:
            prose += 1
    assert prose / len(texts["language", "train"]) > 0.9
    assert sum(" the " in d for d in texts["language", "train"]) / len(texts["language", "train"]) > 0.8
    assert sum("def " in d or "import " in d for d in texts["code", "train"]) / len(texts["code", "train"]) > 0.9


def test_heldout_is_disjoint_and_sources_distinct(texts):
    for n in ("code", "language"):
        assert not set(texts[n, "train"]) & set(texts[n, "heldout"]), n
    every = {k: set(v) for k, v in texts.items()}
    assert not (every["code", "train"] | every["code", "heldout"]) & (every["language", "train"] |
                                                                      every["language", "heldout"])
    # the held-out split is ~10% of documents, chosen by name hash (stable)
    n_lang = len(texts["language", "train"]) + len(texts["language", "heldout"])
    assert 0.03 < len(texts["language", "heldout"]) / n_lang < 0.2
    assert corpus_lib.embedded_documents("code:heldout") == texts["code", "heldout"]
    with pytest.raises(DataError, match="embedded source"):
        corpus_lib.embedded_documents("poetry:train")
    with pytest.raises(DataError, match="split"):
        embedded_corpus("validation")


def test_default_tokenizer_specials_and_roundtrip(texts):
    tok = default_tokenizer()
    assert tok.vocab_size == 1024
    assert tok.eos_id == tok.token_to_id("<|endoftext|>")
    f = tok.fim
    assert f is not None and len({tok.eos_id, f.prefix, f.middle, f.suffix, f.pad}) == 5
    for d in texts["code", "heldout"][:3] + texts["language", "heldout"][:10]:
        ids = tok.encode(d)
        assert tok.decode(ids) == d  # byte-level BPE: lossless, no unknown tokens
    # compresses real text (a trained BPE, not bytes)
    d = texts["language", "heldout"][0]
    assert len(tok.encode(d)) < 0.6 * len(d.encode())
    assert default_tokenizer() is tok


def test_bpe_training_is_deterministic_and_cached(texts, tmp_path, monkeypatch):
    sample = texts["language", "train"][:30] + texts["code", "train"][:2]
    a = train_bpe(sample, vocab_size=400).to_str()
    b = train_bpe(sample, vocab_size=400).to_str()
    assert a == b
    monkeypatch.setenv("JAXLM_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus_lib, "_TOKENIZERS", {})
    t1 = default_tokenizer(vocab_size=300)
    files = [f for f in os.listdir(tmp_path / "data") if f.startswith("tokenizer-")]
    assert len(files) == 1
    mtime = os.path.getmtime(tmp_path / "data" / files[0])
    monkeypatch.setattr(corpus_lib, "_TOKENIZERS", {})
    t2 = default_tokenizer(vocab_size=300)  # loaded from disk, not retrained
    assert os.path.getmtime(tmp_path / "data" / files[0]) == mtime
    assert t1.fingerprint == t2.fingerprint and t1.vocab_size == 300
    text = texts["language", "heldout"][1]
    np.testing.assert_array_equal(t1.encode(text), t2.encode(text))
