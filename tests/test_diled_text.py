"""DiLED text: the corpus byte-pair encoding (lossless on unseen words, deterministic, bad input) and the text
config checks (the word dropout's effect is tested with the text decoder in test_diled_models.py)."""

import pytest

from jaxlm.errors import ConfigError, DataError, ShapeError
from jaxlm.models.diled import data as D
from jaxlm.models.diled.autoencoders import TextAEConfig
from jaxlm.models.diled.model import diled_config

CORPUS = ["The cat sat on the mat.", "The dog sat on the log.", "A cat and a dog.", "The mat is on the log 42."]


def test_corpus_bpe_merges_frequent_pairs_and_round_trips_unseen_text():
    bpe = D.CorpusBPE(CORPUS, 110)
    assert bpe.pieces[:95] == [chr(c) for c in range(32, 127)] and len(bpe.pieces) <= 110
    P = len(bpe.pieces)
    assert " the" in bpe.pieces and (bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.vocab_size) == (P, P + 1, P + 2, P + 3)
    assert [bpe.pieces[t] for t in bpe.tokenize("The cat sat.")][:2] == ["The", " cat"]
    assert D.CorpusBPE(CORPUS, 110).pieces == bpe.pieces            # deterministic
    new = ["Zebras (unseen) sat on 7 mats!", "The cat sat on the mat."]
    ids = bpe.encode(new, 40)
    assert ids[0, 0] == bpe.bos_id and (ids == bpe.eos_id).sum() == 2
    assert bpe.decode(ids[:, 1:]) == new                              # lossless: unseen words fall back to pieces
    assert len(bpe.tokenize(new[1])) < len(new[1])
    with pytest.raises(ShapeError, match="max_len=4"):
        bpe.encode(new, 4)
    with pytest.raises(DataError, match="character 'é'"):
        bpe.encode(["Café au lait."], 40)
    with pytest.raises(ConfigError, match="num_pieces=10"):
        D.CorpusBPE(CORPUS, 10)


def test_text_config_checks_tokenizer_and_word_dropout():
    cfg = diled_config("text")
    assert (cfg.ae.tokenizer, cfg.ae.decoder.vocab_size, cfg.ae.max_len, cfg.ae.word_dropout) == ("bpe", 1024, 32, 0.0)
    with pytest.raises(ConfigError, match="tokenizer='words'"):
        TextAEConfig(tokenizer="words")
    with pytest.raises(ConfigError, match="word_dropout=1.0"):
        TextAEConfig(word_dropout=1.0)
    with pytest.raises(ConfigError, match=r"tokenizer='bytes'.*\(259, 256, 257, 258\).*\(1024"):
        D.text_codec(TextAEConfig(decoder=cfg.ae.decoder, encoder=cfg.ae.encoder))


def _small_bpe_config(bpe):
    """A text AE config whose vocab / specials are those of `bpe` (so text_codec accepts it)."""
    import dataclasses

    ae, V = diled_config("text").ae, bpe.vocab_size
    net = {"vocab_size": V, "bos_token_id": V - 2, "eos_token_id": V - 1}
    return dataclasses.replace(ae, encoder=dataclasses.replace(ae.encoder, **net),
                               decoder=dataclasses.replace(ae.decoder, **net), pad_id=V - 3, bos_id=V - 2, eos_id=V - 1)


def test_the_corpus_bpe_is_saved_with_a_run_and_checked_at_load(tmp_path, monkeypatch):
    """save_codec writes the piece table into the run; load_codec gives it back exactly; a table rebuilt
    differently (another Python's docstrings) or an edited file raises naming tokenizer.json."""
    import json

    bpe = D.CorpusBPE(CORPUS, 110)
    ae = _small_bpe_config(bpe)
    monkeypatch.setattr(D, "corpus_bpe", lambda vocab: bpe)          # the interpreter's rebuild, made cheap
    f = D.save_codec(ae, tmp_path)
    assert f == tmp_path / "tokenizer.json"
    back = D.load_codec(ae, tmp_path)
    assert (back.pieces, back.merges) == (bpe.pieces, bpe.merges) and back is not bpe
    new = ["Zebras sat on the mat.", "The dog and a cat."]
    assert (back.encode(new, 40) == bpe.encode(new, 40)).all()
    D.check_saved_codec(ae, tmp_path)                                # same table: no error
    assert D.save_codec(ae, tmp_path) == f                           # a resumed run keeps (and checks) the file
    spec = json.loads(f.read_text())
    # the same vocab size, other merges (as another Python's docstrings give): tokens would be remapped
    body = {"kind": "corpus_bpe", "pieces": spec["pieces"][:95] + spec["pieces"][95:][::-1],
            "merges": spec["merges"][::-1]}
    other = D.CorpusBPE.from_spec({**body, "sha256": D._spec_sha(body)})
    monkeypatch.setattr(D, "corpus_bpe", lambda vocab: other)
    with pytest.raises(D.TokenizerMismatchError, match=r"tokenizer.json: the run's corpus BPE \(built under Python"):
        D.check_saved_codec(ae, tmp_path)
    with pytest.raises(D.TokenizerMismatchError, match="tokenizer.json"):
        D.save_codec(ae, tmp_path)                                   # resuming under the other table
    assert D.load_codec(ae, tmp_path).pieces == bpe.pieces           # the saved pieces still load
    spec["pieces"][100] = "zz"
    f.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"tokenizer.json: the corpus BPE spec's sha256 does not match"):
        D.load_codec(ae, tmp_path)
    f.write_text("{")
    with pytest.raises(DataError, match="tokenizer.json: not JSON"):
        D.load_codec(ae, tmp_path)
