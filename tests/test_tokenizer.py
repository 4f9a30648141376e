"""The one tokenizer interface (jaxlm.io.tokenizer): load_tokenizer for every source, model vs document mode,
special ids, chat templates, save/load round trips, and the old import paths naming the same objects."""

import io
import json

import numpy as np
import pytest

from jaxlm.errors import ConfigError, DataError, DataFileNotFoundError
from jaxlm.io.tokenizer import (ByteTokenizer, HFTokenizer, SentencePieceTokenizer, Tokenizer, as_tokenizer,
                                load_tokenizer)

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT = "def f(x):\n    return x  # ünïcode <|im_end|> inside"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from jaxlm.data.corpus import train_bpe

    d = tmp_path_factory.mktemp("tok")
    tk = train_bpe(["the quick brown fox jumps over the lazy dog\n", "def f(x):\n    return x * 2\n"] * 20,
                   vocab_size=300, special_tokens=SPECIALS)
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "bos_token": {"content": "<|im_start|>"}, "chat_template": TEMPLATE}))
    return d


def test_model_mode_and_document_mode(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert isinstance(tok, HFTokenizer) and tok.parse_special and tok.vocab_size == 300
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (im_start, im_end, im_end)  # from tokenizer_config.json
    ids = tok.encode(TEXT)
    assert im_end in ids and tok.decode(ids) == TEXT.replace("<|im_end|>", "")  # control token, dropped on decode
    assert tok.decode(ids, skip_special_tokens=False) == TEXT
    doc = tok.for_documents()
    dids = doc.encode(TEXT)
    assert not doc.parse_special and im_end not in dids and doc.decode(dids) == TEXT  # plain text, lossless
    assert [list(a) for a in doc.encode_batch([TEXT, "fox"])] == [dids, doc.encode("fox")]
    assert all(a.dtype == np.int32 for a in doc.encode_batch([TEXT]))
    assert tok.encode(TEXT) == ids  # the model-mode tokenizer is unchanged by making the document view
    assert doc.fingerprint == tok.fingerprint and doc.fim.prefix == tok.token_to_id("<|fim_prefix|>")
    assert as_tokenizer(tok).encode(TEXT) == dids and as_tokenizer(str(tok_dir)).encode(TEXT) == dids


def test_chat_template_bos_and_save_round_trip(tok_dir, tmp_path):
    tok = load_tokenizer(tok_dir / "tokenizer.json")
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    tok.save(tmp_path / "a")
    again = load_tokenizer(tmp_path / "a")
    assert (again.bos_id, again.eos_id, again.chat_template, again.encode(TEXT)) == \
        (tok.bos_id, tok.eos_id, tok.chat_template, tok.encode(TEXT))
    conf = json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    (tmp_path / "a" / "tokenizer_config.json").write_text(json.dumps({**conf, "add_bos_token": True}))
    b = load_tokenizer(tmp_path / "a")
    assert b.encode("fox") == [b.bos_id] + tok.encode("fox") and b.encode("fox", add_bos=False) == tok.encode("fox")
    assert b.for_documents().encode("fox") == tok.encode("fox")  # documents never get BOS
    assert b.encode_batch(["fox"])[0].tolist() == b.encode("fox")
    with pytest.raises(DataError, match="eos_token '<nope>' is not in the vocabulary"):
        load_tokenizer(tok_dir, eos_token="<nope>")
    assert load_tokenizer(tok_dir, eos_token="<|endoftext|>").eos_id == tok.token_to_id("<|endoftext|>")


def test_byte_tokenizer_saves_and_loads(tmp_path):
    from jaxlm.infer.text import render_chat

    ByteTokenizer().save(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, ByteTokenizer) and tok.decode(tok.encode("héllo")) == "héllo" and tok.vocab_size == 256
    with pytest.raises(ConfigError, match="bytes: this tokenizer has no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    assert render_chat(tok, [{"role": "user", "content": "x"}]) == "<|user|>\nx\n<|assistant|>\n"
    with pytest.raises(DataError, match="bytes: tokenizer has no EOS id"):
        tok.for_documents()


def test_sentencepiece_load_and_save(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["the quick brown fox jumps over the lazy dog"] * 100),
                                   model_writer=model, vocab_size=31, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, SentencePieceTokenizer) and tok.eos_id == 2 and tok.decode(tok.encode("lazy fox")) == \
        "lazy fox"
    tok.save(tmp_path / "out")
    again = load_tokenizer(tmp_path / "out")
    assert again.encode("the lazy dog") == tok.encode("the lazy dog") and again.fingerprint == tok.fingerprint


def test_missing_and_bad_sources_name_the_file(tmp_path):
    assert load_tokenizer(tmp_path, missing_ok=True) is None
    with pytest.raises(DataFileNotFoundError, match=f"{tmp_path}: directory has no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(DataFileNotFoundError, match="tokenizer file not found: .*missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "tokenizer.json").write_text("{oops")
    with pytest.raises(DataError, match=r"tokenizer.json: not a valid tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(DataError, match="cannot use int as a tokenizer"):
        as_tokenizer(3)


def test_generic_objects_and_old_import_paths():
    import jaxlm.data as D
    import jaxlm.data.tokenizer as data_tok
    import jaxlm.infer.text as text
    import jaxlm.io.tokenizer as io_tok

    class Chars:
        eos_id, vocab_size = 0, 128

        def encode(self, s):
            return [ord(c) for c in s]

        def decode(self, ids):
            return "".join(map(chr, ids))

    g = as_tokenizer(Chars())
    assert isinstance(g, Tokenizer) and g.encode_batch(["ab"])[0].tolist() == [97, 98] and g.fingerprint is None
    assert D.load_tokenizer is data_tok.load_tokenizer is text.load_tokenizer is io_tok.load_tokenizer
    assert data_tok.HFTokenizer is io_tok.Tok is HFTokenizer and text.ByteTokenizer is ByteTokenizer
    assert D.as_tokenizer is as_tokenizer and data_tok.Tokenizer is Tokenizer
