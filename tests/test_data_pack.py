"""LLM360 packing: documents joined with EOS, no BOS, cut into seq_len+1 samples; long documents span samples."""

import numpy as np
import pytest

from jaxlm.data import DataConfig, PhaseSpec, SourceSpec, build_pipeline, default_tokenizer, inputs_targets, pack
from jaxlm.data.pack import OverlayStore, PackedStream, TokenStore

EOS = 0


def _docs(rng, n, max_len):
    return [rng.integers(5, 1000, size=int(rng.integers(1, max_len))).astype(np.int32) for _ in range(n)]


def test_pack_joins_with_eos_and_cuts_windows():
    docs = [np.array([5, 6, 7]), np.array([8]), np.array([9, 10, 11, 12, 13])]
    out = pack(docs, EOS, seq_len=3)
    # stream: 5 6 7 E 8 E 9 10 11 12 13 E  -> windows of 4, nothing left over
    np.testing.assert_array_equal(out, [[5, 6, 7, 0], [8, 0, 9, 10], [11, 12, 13, 0]])
    assert out.dtype == np.int32
    out2 = pack(docs, EOS, seq_len=4)  # 12 tokens -> two windows of 5, the last 2 tokens dropped
    np.testing.assert_array_equal(out2, [[5, 6, 7, 0, 8], [0, 9, 10, 11, 12]])
    x, y = inputs_targets(out)
    np.testing.assert_array_equal(x, out[:, :-1])
    np.testing.assert_array_equal(y, out[:, 1:])


@pytest.mark.parametrize("seq_len", [2, 7, 64])
def test_packed_stream_random_access_matches_reference(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = _docs(rng, 60, 3 * seq_len + 5)  # many documents longer than a sample
    docs[10] = np.arange(5, 5 + 10 * seq_len, dtype=np.int32)  # one spanning ~10 samples
    store = TokenStore.from_arrays(docs)
    order = rng.permutation(len(docs))
    ps = PackedStream(store, order, EOS, seq_len)
    ref = pack([docs[i] for i in order], EOS, seq_len)
    assert ps.n_samples == len(ref) > 10
    got = np.stack([ps.sample(i) for i in range(ps.n_samples)])
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(IndexError):
        ps.sample(ps.n_samples)


def test_overlay_store_replaces_documents():
    base = TokenStore.from_arrays([np.array([1, 2]), np.array([3]), np.array([4, 5, 6])])
    over = TokenStore.from_arrays([np.array([9, 9, 9, 9])])
    st = OverlayStore(base, over, np.array([-1, 0, -1]))
    np.testing.assert_array_equal(st[1], [9, 9, 9, 9])
    np.testing.assert_array_equal(st.lengths, [2, 4, 3])
    np.testing.assert_array_equal(st[2], [4, 5, 6])


def test_token_store_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 20, 50)
    st = TokenStore.from_arrays(docs)
    st.save(str(tmp_path / "t.npz"))
    back = TokenStore.load(str(tmp_path / "t.npz"))
    for a, b in zip(docs, [back[i] for i in range(len(back))]):
        np.testing.assert_array_equal(a, b)


def test_pipeline_rows_are_packed_documents_without_bos():
    """A pipeline over unshuffled documents yields exactly the reference packing, inputs/targets shifted by one,
    and a document much longer than seq_len continues across consecutive samples."""
    tok = default_tokenizer()
    long_doc = " ".join(f"word{i}" for i in range(120))  # hundreds of tokens, far longer than seq_len
    docs = ("short one.", long_doc, "another document\nwith two lines", "x = 1\n" * 60, "the end")
    cfg = DataConfig(seq_len=16, global_batch=4, seed=0, shuffle=False,
                     sources={"lang": SourceSpec.from_docs(docs)}, phases=(PhaseSpec(10, {"lang": 1.0}),))
    pipe = build_pipeline(cfg, tok)
    ref = pack([tok.encode(d) for d in docs], tok.eos_id, 16)
    rows = []
    assert len(ref) >= 20
    for _ in range(len(ref) // 4):
        b = pipe.next()
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
        assert b["inputs"].dtype == np.int32 and b["inputs"].shape == (4, 16)
        rows.append(np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1))
    rows = np.concatenate(rows)
    np.testing.assert_array_equal(rows, ref[:len(rows)])
    assert rows[0, 0] == tok.encode("short one.")[0]  # no BOS in front
    if tok.bos_id is not None:
        assert tok.bos_id not in rows
    flat = rows.reshape(-1)
    eos_pos = np.flatnonzero(flat == tok.eos_id)
    n_first, n_long = len(tok.encode(docs[0])), len(tok.encode(long_doc))
    assert eos_pos[0] == n_first and eos_pos[1] == n_first + 1 + n_long  # the long doc spans many samples intact
    assert tok.decode(flat[n_first + 1:n_first + 1 + n_long]) == long_doc
