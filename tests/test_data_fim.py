"""FIM (StarCoder/Crystal): PSM and SPM formats, rates, character-level split points, invertibility, and its use
by the pipeline on code sources only, at each phase's rate."""

import numpy as np
import pytest

from jaxlm.data import (DataConfig, PhaseSpec, SourceSpec, apply_fim, build_pipeline, default_tokenizer,
                        embedded_corpus, open_source, reassemble, train_bpe)
from jaxlm.data import fim as fim_lib
from jaxlm.data.tokenizer import HFTokenizer
from jaxlm.errors import ConfigError


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def code_docs():
    """~400 real code snippets (the embedded stdlib sources cut into pieces of varied length)."""
    texts = open_source(embedded_corpus()["code"]).texts
    rng = np.random.default_rng(0)
    out = []
    for t in texts[:40]:
        pos = 0
        while pos < len(t) and len(out) < 400:
            n = int(rng.integers(1, 800))
            out.append(t[pos:pos + n])
            pos += n
    return out


def test_psm_format(tok):
    text = "def add(a, b):\n    return a + b\n"
    f = tok.fim
    for seed in range(20):
        ids = apply_fim(text, tok, np.random.default_rng(seed), rate=1.0, spm_rate=0.0)
        assert ids[0] == f.prefix and ids[1] != f.suffix
        s, m = list(ids).index(f.suffix), list(ids).index(f.middle)
        assert 0 < s < m
        assert [i for i in ids if i in (f.prefix, f.middle, f.suffix)] == [f.prefix, f.suffix, f.middle]
        prefix, suffix, middle = tok.decode(ids[1:s]), tok.decode(ids[s + 1:m]), tok.decode(ids[m + 1:])
        assert prefix + middle + suffix == text
        assert tok.eos_id not in ids  # EOS is added by packing, after the whole document


def test_spm_format(tok):
    text = "for i in range(10):\n    print(i * i)\n"
    f = tok.fim
    for seed in range(20):
        rng = np.random.default_rng(seed)
        p = fim_lib.plan(np.array([len(text)]), 1.0, 1.0, np.random.default_rng(seed))
        prefix, middle, suffix = fim_lib.split(text, p.cuts[0])
        ids = apply_fim(text, tok, rng, rate=1.0, spm_rate=1.0)
        assert list(ids[:2]) == [f.prefix, f.suffix]
        m = list(ids).index(f.middle)
        assert tok.decode(ids[2:m]) == suffix  # SPM: <pre><suf> suffix <mid> prefix middle
        np.testing.assert_array_equal(ids[m + 1:], tok.encode(prefix) + tok.encode(middle))


def test_split_points_are_character_level_and_cover_the_range():
    lens = np.full(20000, 10)
    p = fim_lib.plan(lens, 1.0, 0.5, np.random.default_rng(0))
    assert (p.cuts[:, 0] <= p.cuts[:, 1]).all() and p.cuts.min() == 0 and p.cuts.max() == 10
    # two uniform draws on {0..10}, sorted: every position occurs, empty prefix/middle/suffix are all possible
    assert set(np.unique(p.cuts)) == set(range(11))
    assert (p.cuts[:, 0] == p.cuts[:, 1]).any() and (p.cuts[:, 0] == 0).any() and (p.cuts[:, 1] == 10).any()
    text = "αβγδεζηθικ"  # multi-byte characters: cuts are on characters, not bytes
    pre, mid, suf = fim_lib.split(text, p.cuts[3])
    assert pre + mid + suf == text and len(pre) == p.cuts[3, 0]


@pytest.mark.parametrize("rate,spm_rate", [(0.9, 0.5), (0.3, 0.2), (0.0, 0.5), (1.0, 1.0)])
def test_fim_rates_are_statistically_respected(rate, spm_rate):
    n = 20000
    p = fim_lib.plan(np.full(n, 100), rate, spm_rate, np.random.default_rng(1))
    frac = p.apply.mean()
    assert abs(frac - rate) < 4 * np.sqrt(rate * (1 - rate) / n) + 1e-9
    if rate > 0:
        spm_frac = p.spm[p.apply].mean()
        assert abs(spm_frac - spm_rate) < 4 * np.sqrt(spm_rate * (1 - spm_rate) / p.apply.sum()) + 1e-9


def test_fim_is_invertible_on_real_code(tok, code_docs):
    p = fim_lib.plan(np.array([len(t) for t in code_docs]), 0.7, 0.5, np.random.default_rng(3))
    out = fim_lib.transform(code_docs, p, tok, tok.fim)
    assert set(out) == set(np.flatnonzero(p.apply).tolist())
    n_spm = 0
    for i, text in enumerate(code_docs):
        ids = out[i] if i in out else np.asarray(tok.encode(text))
        assert reassemble(ids, tok) == text
        n_spm += int(i in out and ids[1] == tok.fim.suffix)
    assert 0 < n_spm < len(out)  # both formats were exercised


def test_special_token_text_in_documents_is_not_a_control_token(tok):
    text = "s = '<|fim_middle|> and <|endoftext|>'\n"
    ids = tok.encode(text)
    assert tok.fim.middle not in ids and tok.eos_id not in ids and tok.decode(ids) == text
    fim_ids = apply_fim(text, tok, np.random.default_rng(0), rate=1.0, spm_rate=0.0)
    assert reassemble(fim_ids, tok) == text


def _code_lang_cfg(phases, **kw):
    lang = tuple(f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 3 for i in range(60))
    code = tuple(f"def f{i}(x):\n    y = x * {i}\n    return y + {i % 7}\n" * 2 for i in range(60))
    return DataConfig(seq_len=32, global_batch=8, seed=0, phases=phases,
                      sources={"code": SourceSpec.from_docs(code, kind="code"), "language": SourceSpec.from_docs(lang)},
                      **kw)


def test_pipeline_applies_fim_to_code_only_at_the_phase_rate(tok):
    cfg = _code_lang_cfg((PhaseSpec(10, {"code": .5, "language": .5}, fim_rate=0.0),
                          PhaseSpec(10, {"code": .5, "language": .5}, fim_rate=1.0, fim_spm_rate=0.5)))
    pipe = build_pipeline(cfg, tok)
    fim_ids = {tok.fim.prefix, tok.fim.middle, tok.fim.suffix}
    code_id = pipe.source_names.index("code")
    seen_fim = 0
    for step in range(20):
        b = pipe.next()
        for row, sid in zip(b["inputs"], b["source_id"]):
            has = bool(fim_ids & set(row.tolist()))
            if step < 10 or sid != code_id:
                assert not has, (step, sid)
            else:
                seen_fim += has
    assert seen_fim > 10
    # every code document of the FIM epoch was transformed (rate 1.0), with both formats
    stream = pipe.streams["code"]
    seg, fcfg, _ = pipe._segments[1]["code"]
    ep = stream.epoch(seg, fcfg, 0)
    assert (ep.stream.docs.index >= 0).all()
    assert fcfg == (1.0, 0.5) and pipe._segments[0]["code"][1] == (0.0, 0.0)


def test_fim_epoch_rate_matches_phase_rate(tok, code_docs):
    cfg = DataConfig(seq_len=32, global_batch=8, seed=5, sources={"c": SourceSpec.from_docs(code_docs, kind="code")},
                     phases=(PhaseSpec(5, {"c": 1.0}, fim_rate=0.6, fim_spm_rate=0.25),))
    pipe = build_pipeline(cfg, tok)
    seg, fcfg, _ = pipe._segments[0]["c"]
    docs = pipe.streams["c"].epoch(seg, fcfg, 0).stream.docs
    applied = docs.index >= 0
    n = len(applied)
    assert abs(applied.mean() - 0.6) < 4 * np.sqrt(0.6 * 0.4 / n)
    spm = np.array([docs.overrides[j][1] == tok.fim.suffix for j in docs.index[applied]])
    assert abs(spm.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / applied.sum())


def test_fim_without_fim_tokens_is_a_clear_error():
    tk = train_bpe(["plain text only " * 50], vocab_size=300, special_tokens=("<|endoftext|>",))
    tok = HFTokenizer(tk, eos_id=tk.token_to_id("<|endoftext|>"))
    cfg = _code_lang_cfg((PhaseSpec(4, {"language": 1.0}), PhaseSpec(4, {"code": 1.0}, fim_rate=0.5)))
    with pytest.raises(ConfigError, match=r"phases\[1\]\.fim_rate.*fim_prefix"):
        build_pipeline(cfg, tok)
    # without FIM the same tokenizer is fine
    build_pipeline(_code_lang_cfg((PhaseSpec(4, {"code": 1.0}),)), tok).next()


def test_fim_epochs_are_random_access(tok, code_docs):
    """Many FIM epochs of a small code source: any step regenerates exactly (no replay of earlier epochs), every
    epoch has a fresh FIM draw, and a FIM epoch's samples are its FIM-transformed documents packed with EOS."""
    docs = tuple(code_docs[:40])
    cfg = DataConfig(seq_len=32, global_batch=4, seed=9, sources={"c": SourceSpec.from_docs(docs, kind="code")},
                     phases=(PhaseSpec(200, {"c": 1.0}, fim_rate=0.8, fim_spm_rate=0.5),))
    pipe = build_pipeline(cfg, tok)
    n_epoch = pipe.streams["c"].n_base_samples
    steps = 3 * n_epoch // 4 + 2  # > 3 epochs
    it = [pipe.next() for _ in range(steps)]
    fresh = build_pipeline(cfg, tok)
    for t in sorted(range(steps), reverse=True)[::7]:
        np.testing.assert_array_equal(fresh.batch_at(t)["inputs"], it[t]["inputs"])
    s = fresh.streams["c"]
    e0, e1 = s.epoch(0, (0.8, 0.5), 0).stream, s.epoch(0, (0.8, 0.5), 1).stream
    assert not np.array_equal(e0.docs.index >= 0, e1.docs.index >= 0)  # new FIM decisions per epoch
    # epoch 0 = the transformed documents in its order, EOS-joined, each reassembling to the original
    from jaxlm.data import pack
    transformed = [e0.docs[i] for i in e0.order]
    ref = pack(transformed, tok.eos_id, 32)
    np.testing.assert_array_equal(np.stack([e0.sample(i) for i in range(len(ref))]), ref)
    assert [reassemble(t, tok) for t in transformed] == [docs[i] for i in e0.order]
