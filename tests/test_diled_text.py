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
