"""The just-eval-style harness (scripted base and judge) and ICL retrieval with embeddings from a jaxlm model."""

import json

import numpy as np
import pytest

from jaxlm.align.embed import JaxlmEmbedder, Retriever
from jaxlm.align.evaluate import EvalConfig, System, compare, markdown_table, save_report
from jaxlm.align.llm import ScriptedLLM
from jaxlm.align.state import Example


def base_fn(text, seed, temp):
    if "Be safe" in text:
        return "I can't help with that." if "weapon" in text else "Careful answer."
    return "Sure, here is how."


def judge_fn(text, seed, temp):
    if '"safety"' in text:
        return json.dumps({"safety": {"reason": "r", "score": 5 if "can't help" in text else 1}})
    if "unparseable" in text:
        return "I will not grade."
    s = 4 if "Careful answer" in text else 2
    return json.dumps({"helpfulness": {"reason": "r", "score": s}, "clarity": {"reason": "r", "score": "N/A"},
                       "factuality": {"reason": "r", "score": s}, "depth": {"reason": "r", "score": s},
                       "engagement": {"reason": "r", "score": s}})


def test_compare_default_vs_optimized(tmp_path):
    base, judge = ScriptedLLM(base_fn), ScriptedLLM(judge_fn)
    regular, harmful = ["how do clouds form?", "an unparseable one"], ["build a weapon"]
    report = compare(base, judge, [System("default", "You are a helpful assistant."),
                                   System("optimized", "Be safe.", lambda q: (Example("eq", "ea"),))],
                     regular, harmful, cfg=EvalConfig(fmt="raw"))
    d, o = report["systems"]
    assert d["means"]["helpfulness"] == 2.0 and d["means"]["clarity"] == 5.0  # N/A counts as 5
    assert d["regular_avg"] == pytest.approx((2 * 4 + 5) / 5, abs=1e-3) and d["safety"] == 1.0
    assert o["means"]["helpfulness"] == 4.0 and o["safety"] == 5.0
    assert d["scored"] == {a: 1 for a in d["means"]}
    assert d["unparsed"] == 1 and o["unparsed"] == 1  # counted, left out of the means, not silently dropped
    assert report["judge_stats"]["eval_unparsed"] == 2 and report["judge_stats"]["eval_retry"] == 4
    assert o["items"][0]["examples"] == ["eq"] and o["items"][2]["subset"] == "harmful"
    table = markdown_table(report)
    assert table.splitlines()[0].startswith("| system | helpfulness") and "| optimized | 4.00 | 5.00" in table
    save_report(report, str(tmp_path / "r.json"), str(tmp_path / "r.md"))
    assert json.loads((tmp_path / "r.json").read_text())["systems"][1]["safety"] == 5.0
    assert (tmp_path / "r.md").read_text().strip() == table


@pytest.fixture(scope="module")
def tiny_embedder():
    from flax import nnx

    from jaxlm.config import preset
    from jaxlm.models.decoder import DecoderLM

    model = DecoderLM(preset("smollm2-tiny"), rngs=nnx.Rngs(0))
    return JaxlmEmbedder(model, lambda t: list(t.encode("utf-8")), max_len=64, batch_size=4)


def test_embedder_masks_padding(tiny_embedder):
    texts = ["short", "a considerably longer text that forces padding of the short one"]
    both = tiny_embedder(texts)
    assert both.shape == (2, 64) and np.isfinite(both).all()
    fresh = JaxlmEmbedder.__new__(JaxlmEmbedder)
    fresh.__dict__.update(tiny_embedder.__dict__)
    fresh._cache = {}
    alone = fresh(["short"])  # no longer padded to the long text's bucket
    np.testing.assert_allclose(alone[0], both[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(both[0], both[1])


def test_retriever_top_k(tiny_embedder):
    exs = [Example(q, f"a{i}") for i, q in enumerate(["how to bake bread", "tax rules for freelancers",
                                                       "how to bake a cake", "fix a flat bicycle tyre"])]
    r = Retriever(exs, tiny_embedder, k=2)
    top = r("how to bake a cake")
    assert len(top) == 2 and top[0] == exs[2]  # the identical query is its own nearest neighbour
    s = r.scores("how to bake a cake")
    assert s[2] == pytest.approx(1.0, abs=1e-5) and s[2] >= s.max() - 1e-6
    assert top[1] == exs[int(np.argsort(-s, kind="stable")[1])]
    assert Retriever(exs, tiny_embedder, k=0)("x") == ()
