"""jaxlm.data.windows: seeded random windows per step (pure function of (seed, offset + step), resumable), the
consecutive held-out windows, the pydoc topics split and tokenize_texts."""

from types import SimpleNamespace

import numpy as np
import pytest

from jaxlm.data import RandomWindowPipeline, tokenize_texts, topics_split, window_eval_batches
from jaxlm.errors import ConfigError, DataError

TOKENS = np.arange(1000, 1500, dtype=np.int32)  # token i sits at position i - 1000: windows are easy to check


def test_random_windows_are_the_seeded_draws_and_shift_targets():
    p = RandomWindowPipeline(TOKENS, batch=3, seq_len=8, seed=5, step_offset=7)
    for step in range(3):
        b = p.next()
        starts = np.random.default_rng([5, 7 + step]).integers(0, len(TOKENS) - 8, size=3)
        np.testing.assert_array_equal(b["inputs"], TOKENS[starts[:, None] + np.arange(8)])
        np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
        assert (b["targets"][:, -1] == -1).all() and int(b["step"]) == step
    # step_offset continues one global sequence: offset 7, step 2 == offset 0, step 9
    np.testing.assert_array_equal(RandomWindowPipeline(TOKENS, 3, 8, 5).batch_at(9)["inputs"], b["inputs"])
    assert not np.array_equal(RandomWindowPipeline(TOKENS, 3, 8, 6).batch_at(9)["inputs"], b["inputs"])
    full = RandomWindowPipeline(TOKENS, 3, 8, 5, full_targets=True).batch_at(0)
    assert full["inputs"].shape == full["targets"].shape == (3, 8)
    np.testing.assert_array_equal(full["targets"], full["inputs"] + 1)  # every position has its next token


def test_random_windows_resume_and_processes():
    a = RandomWindowPipeline(TOKENS, 4, 8, 1)
    [a.next() for _ in range(3)]
    state = a.get_state()
    b = RandomWindowPipeline(TOKENS, 4, 8, 1)
    b.set_state(state)
    np.testing.assert_array_equal(a.next()["inputs"], b.next()["inputs"])
    with pytest.raises(ConfigError, match="seed"):
        RandomWindowPipeline(TOKENS, 4, 8, 2).set_state(state)
    rows = [RandomWindowPipeline(TOKENS, 4, 8, 1, process_index=i, process_count=2).batch_at(3)["inputs"]
            for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(rows), a.batch_at(3)["inputs"])
    with pytest.raises(DataError, match="seq_len=8"):
        RandomWindowPipeline(TOKENS[:8], 4, 8)
    with pytest.raises(ConfigError, match="batch"):
        RandomWindowPipeline(TOKENS, 0, 8)


def test_eval_windows_are_consecutive_and_disjoint():
    ev = window_eval_batches(TOKENS, batch=4, seq_len=10, max_batches=3)
    assert len(ev) == 3
    flat = np.concatenate([b["inputs"] for b in ev]).reshape(-1)
    np.testing.assert_array_equal(flat, TOKENS[:120])
    assert (ev[0]["targets"][:, -1] == -1).all()
    assert len(window_eval_batches(TOKENS, 4, 10)) == 12  # 50 windows -> 12 full batches
    assert [len(b["inputs"]) for b in window_eval_batches(TOKENS[:30], 4, 10)] == [3]  # fewer than a batch


# anything with encode / decode / eos_id / vocab_size is a tokenizer (bytes + 1; 0 is EOS)
BYTES = SimpleNamespace(eos_id=0, vocab_size=257, encode=lambda t: [1 + b for b in t.encode()], decode=None)


def test_topics_split_and_tokenize_texts():
    from pydoc_data.topics import topics

    train, held = topics_split(10)
    keys = sorted(topics)
    assert held[0] == topics[keys[0]] and held[1] == topics[keys[10]] and train[0] == topics[keys[1]]
    assert len(train) + len(held) == len(keys) and len(held) == (len(keys) + 9) // 10
    ids = tokenize_texts(["ab", "c"], BYTES)
    np.testing.assert_array_equal(ids, [98, 99, 0, 100, 0])
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(tokenize_texts(["ab"], BYTES, eos=False), [98, 99])
    with pytest.raises(ConfigError, match="holdout_every"):
        topics_split(1)
