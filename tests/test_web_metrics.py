"""WUB scoring, WCGB judge parsing/aggregation (scripted judge), CIEDE2000 against Sharma et al. (2005), and
Design2Code metric validity on real pages rendered in the real browser."""

import random
import re

import numpy as np
import pytest

from jaxlm.align.llm import Cached, Ledger, Metered, ResponseCache, ScriptedLLM
from jaxlm.errors import DataError
from jaxlm.web import wcgb, wub
from jaxlm.web.color import ciede2000, color_similarity, srgb_to_lab


def test_wub_scoring_is_the_originals():
    rows = [{"q_id": 1, "pred": "Yes</s>", "actual": "Yes"},  # </s> removed, upper-cased
            {"q_id": 2, "pred": "  yes, there is a table", "actual": "Yes"},  # answer in the first five chars
            {"q_id": 3, "pred": "The answer is yes", "actual": "Yes"},  # not in the first five: wrong
            {"q_id": 4, "pred": "no", "actual": "Yes"},
            {"q_id": 5, "pred": "NO.", "actual": "no"}]
    rep = wub.score_wub(rows)
    assert (rep.correct, rep.total) == (3, 5) and rep.accuracy == pytest.approx(60.0)
    assert rep.per_question == {1: True, 2: True, 3: False, 4: False, 5: True}
    assert wub.needs_retry("maybe") and not wub.needs_retry(" yes</s>")
    with pytest.raises(DataError, match="row 0: 'pred'"):
        wub.score_wub([{"actual": "Yes"}])


def test_answer_wub_retries_like_code_eval():
    answers = {"q1": iter(["Yes"]), "q2": iter(["I think so", "no</s>"]), "q3": iter(["hmm", "unsure"])}
    rows = [{"image": "a.png", "question_id": q, "Q": q, "A": a} for q, a in (("q1", "Yes"), ("q2", "No"), ("q3", "Yes"))]
    res, counts = wub.answer_wub(lambda img, q: next(answers[q]), rows)
    assert [r["pred"] for r in res] == ["Yes", "no</s>", "unsure"]
    assert counts == {"asked": 5, "retries": 2, "not_yes_no": 1}
    assert wub.score_wub(res).correct == 2


def test_wcgb_parse_and_aggregate_like_the_original():
    assert wcgb.parse_scores("7, 6, 8, 5\n9,7,6,8,9,6") == ([7, 6, 8, 5, 9, 7, 6, 8, 9, 6], None)
    assert wcgb.parse_scores("7,6,8")[1] == "3 numbers, expected 10"
    assert "not an integer list" in wcgb.parse_scores("Scores: 7,6,8,5,9,7,6,8,9,6")[1]
    assert "not an integer list" in wcgb.parse_scores("7.5,6,8,5,9,7,6,8,9,6")[1]
    assert "outside 0..10" in wcgb.parse_scores("70,6,8,5,9,7,6,8,9,6")[1]
    rep = wcgb.aggregate({"a": [8, 8, 8, 8, 6, 4, 9, 9, 9, 2], "b": [4, 4, 4, 4, 2, 2, 3, 3, 3, 10]})
    assert (rep.VSA, rep.CAD, rep.TCC, rep.UII) == (6.0, 3.5, 6.0, 6.0)
    assert rep.Overall == pytest.approx((6 + 3.5 + 6 + 6) / 4)  # the mean of the 4 groups, not of 10 criteria
    assert len(wcgb.CRITERIA) == 10 and sorted(sum(wcgb.GROUPS.values(), ())) == list(range(10))


def test_wcgb_judge_reports_parse_and_render_failures(tmp_path):
    from jaxlm.web.render import RenderResult

    answers = iter(["9,9,9,9,9,9,9,9,9,9", "I cannot compare these images.", "5,5,5,5,5,5,5,5,5"])
    judge = ScriptedLLM(lambda text, seed, t: next(answers))
    ledger = Ledger()
    llm = Metered(Cached(judge, ResponseCache(tmp_path / "c.sqlite"), model="judge"), "judge", ledger)
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 16
    items = [("ok", png, png), ("chatty", png, png + b"1"), ("nine", png, png + b"2"),
             ("broken", png, RenderResult(ok=False, error="timeout: Page.set_content"))]
    rep = wcgb.judge_wcgb(llm, items)
    assert (rep.scored, rep.total) == (1, 4) and rep.coverage == 0.25
    assert set(rep.parse_failures) == {"chatty", "nine"} and "9 numbers" in rep.parse_failures["nine"]
    assert rep.render_failures == {"broken": "timeout: Page.set_content"}
    assert rep.Overall == 9.0 and judge.calls == 3  # the failed render was never sent
    assert ledger.summary()["judge"]["calls"] == 3
    msg = judge.log[0][0]
    assert "Layout Consistency" in msg and "data:image/png;base64," in msg
    rep2 = wcgb.judge_wcgb(llm, items[:1])  # cached: no new call
    assert judge.calls == 3 and rep2.Overall == 9.0


def test_wcgb_original_output_file_and_resumable_run(tmp_path):
    import json

    from jaxlm.web.render import RenderResult

    p = tmp_path / "gpt4_vision_evaluation.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [{"image_id": "a", "output": "8,8,8,8,6,4,9,9,9,2"},
                                                    {"image_id": "b", "output": "sorry"}]) + "\n")
    rep = wcgb.aggregate_jsonl(p)
    assert rep.scored == 1 and rep.parse_failures == {"b": "not an integer list (item 'sorry')"}
    assert rep.Overall == pytest.approx((8 + 5 + 9 + 2) / 4)

    class FakeRenderer:
        def render(self, html, options=None):
            return RenderResult(ok=html != "BAD", png=b"\x89PNG" + html.encode(), error=None if html != "BAD" else "x")

    judge = ScriptedLLM(default="5,5,5,5,5,5,5,5,5,5")
    refs = {"p1": b"r1", "p2": b"r2", "p3": b"r3", "p4": b"r4"}
    preds = {"p1": "<p>1</p>", "p2": "<p>2</p>", "p3": "BAD"}
    out = tmp_path / "judge.jsonl"
    rep = wcgb.run_wcgb(FakeRenderer(), preds, refs, judge, out_jsonl=out)
    assert (rep.scored, rep.total, judge.calls) == (2, 4, 2)
    assert rep.render_failures == {"p3": "x", "p4": "no prediction"}
    rep2 = wcgb.run_wcgb(FakeRenderer(), {k: v for k, v in preds.items() if k != "p3"}, refs, judge, out_jsonl=out)
    assert judge.calls == 2 and rep2.scored == 2  # resumed from the file: nothing asked again


SHARMA = [(50, 2.6772, -79.7751, 50, 0, -82.7485, 2.0425), (50, 3.1571, -77.2803, 50, 0, -82.7485, 2.8615),
          (50, 2.8361, -74.0200, 50, 0, -82.7485, 3.4412), (50, -1.3802, -84.2814, 50, 0, -82.7485, 1.0),
          (50, -1.1848, -84.8006, 50, 0, -82.7485, 1.0), (50, -0.9009, -85.5211, 50, 0, -82.7485, 1.0),
          (50, 0, 0, 50, -1, 2, 2.3669), (50, -1, 2, 50, 0, 0, 2.3669),
          (50, 2.49, -0.001, 50, -2.49, 0.0009, 7.1792), (50, 2.49, -0.001, 50, -2.49, 0.001, 7.1792),
          (50, 2.49, -0.001, 50, -2.49, 0.0011, 7.2195), (50, 2.49, -0.001, 50, -2.49, 0.0012, 7.2195),
          (50, -0.001, 2.49, 50, 0.0009, -2.49, 4.8045), (50, -0.001, 2.49, 50, 0.001, -2.49, 4.8045),
          (50, -0.001, 2.49, 50, 0.0011, -2.49, 4.7461), (50, 2.5, 0, 50, 0, -2.5, 4.3065),
          (50, 2.5, 0, 73, 25, -18, 27.1492), (50, 2.5, 0, 61, -5, 29, 22.8977), (50, 2.5, 0, 56, -27, -3, 31.9030),
          (50, 2.5, 0, 58, 24, 15, 19.4535), (50, 2.5, 0, 50, 3.1736, 0.5854, 1.0), (50, 2.5, 0, 50, 3.2972, 0, 1.0),
          (50, 2.5, 0, 50, 1.8634, 0.5757, 1.0), (50, 2.5, 0, 50, 3.2592, 0.3350, 1.0),
          (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
          (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
          (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
          (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
          (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
          (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
          (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
          (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
          (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
          (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082)]


def test_ciede2000_matches_sharma_2005_test_data():
    a = np.array(SHARMA)
    d = ciede2000(a[:, :3], a[:, 3:6])
    np.testing.assert_allclose(d, a[:, 6], atol=1e-4)  # the published values have 4 decimals
    np.testing.assert_allclose(ciede2000(a[:, 3:6], a[:, :3]), d, atol=1e-12)  # symmetric
    np.testing.assert_allclose(srgb_to_lab([255, 0, 0]), [53.2408, 80.0925, 67.2032], atol=1e-3)
    np.testing.assert_allclose(srgb_to_lab([255, 255, 255]), [100, 0, 0], atol=1e-3)
    assert color_similarity((10, 20, 30), (10, 20, 30)) == 1.0
    assert color_similarity((0, 0, 0), (255, 255, 255)) == 0.0  # dE00 = 100 -> max(0, 1 - 1)


needs_browser = pytest.mark.usefixtures("real_browser")


@pytest.fixture(scope="module")
def pages():
    import playwright  # noqa: F401  (installed by scripts/setup.sh: the web extra)
    from jaxlm.web import data as D
    from jaxlm.web.design2code import extract_blocks
    from jaxlm.web.render import RenderOptions, shared_renderer

    r, o = shared_renderer(), RenderOptions(width=640, height=480, max_height=960)
    page = D.make_page(random.Random(3), "t", "modern")
    pydoc_html = D.pydoc_pages(("colorsys",))[0][1]

    def blocks(html):
        b, res = extract_blocks(r, html, o)
        assert res.ok, res.error
        return b

    return {"template": page.html, "pydoc": pydoc_html, "blocks": blocks}


def _shuffle_words(html, tag):
    rng = random.Random(0)

    def sh(m):
        words = m.group(2).split()
        rng.shuffle(words)
        return m.group(1) + " ".join(words) + m.group(3)

    return re.sub(rf"(<{tag}[^>]*>)([^<]+)(</{tag}>)", sh, html)


@needs_browser
def test_design2code_metric_validity_on_real_pages(pages):
    """On a real pydoc page: identical HTML scores 1.0 on every component, recolouring lowers only Colour, moving
    the blocks lowers Position; on a template page shuffling the words lowers Text."""
    from jaxlm.web.design2code import score_blocks

    html, blocks = pages["pydoc"], pages["blocks"]
    ref = blocks(html)
    assert len(ref) >= 5
    same = score_blocks(blocks(html), ref)  # a second, independent render
    assert (same.block_match, same.text, same.position, same.color) == (1.0, 1.0, 1.0, 1.0)
    from jaxlm.web.design2code import TEXT_TAGS

    inject = "<style>" + ",".join(TEXT_TAGS) + "{color:rgb(200,30,30)!important}</style>"  # text colour only
    recol = score_blocks(blocks(html.replace("</head>", inject + "</head>", 1)), ref)
    assert recol.color < 0.95 and (recol.block_match, recol.text, recol.position) == (1.0, 1.0, 1.0)
    moved = score_blocks(blocks(html.replace("</head>", "<style>body{margin:120px 0 0 160px!important}</style></head>", 1)), ref)
    assert moved.position < 0.9 and moved.text == 1.0 and moved.color > 0.999  # re-wrapped glyphs: < 1e-3
    tref = blocks(pages["template"])
    shuffled = score_blocks(blocks(_shuffle_words(pages["template"], "p")), tref)
    assert shuffled.text < 0.99 and shuffled.color > 0.999 and shuffled.position > 0.95


def test_design2code_no_blocks_and_bad_input():
    from jaxlm.web.design2code import Block, D2CScores, mean_scores, score_blocks

    s = score_blocks([], [Block("a", (0, 0, 0.1, 0.1), (0, 0, 0))])
    assert (s.block_match, s.text, s.position, s.color, s.final) == (0, 0, 0, 0, None)
    assert s.note == "no blocks detected in the prediction"
    m = mean_scores([s, D2CScores(1, 1, 1, 1)])
    assert m["text"] == 0.5 and m["final"] is None and m["notes"] == 1  # never a Design2Code score without CLIP
    assert D2CScores(1, 1, 1, 1, clip=0.5).final == pytest.approx(0.9)
    with pytest.raises(DataError, match="no scores"):
        mean_scores([])
