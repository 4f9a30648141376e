"""jaxlm.web.data: the published formats round-trip, the template corpus, balanced QA, the pydoc held-out set."""

import json
import random
import shutil

import pytest

from jaxlm.errors import DataError
from jaxlm.web import data as D

SAMPLE = [{"id": "99720969-2c4f-4a7e-9a40-0c8d6b1a2b3c", "image": "pix2code/99720969-2c4f-4a7e-9a40-0c8d6b1a2b3c.png",
           "conversations": [{"from": "human", "value": "<image>\nGenerate HTML code using Bootstrap layout."},
                             {"from": "gpt", "value": "<html>\n<header>\n<meta charset=\"utf-8\">"}]},
          {"id": "text-only-1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]


def test_llava_json_loads_the_published_layout_unchanged(tmp_path):
    p = tmp_path / "Web2Code.json"
    p.write_text(json.dumps(SAMPLE), encoding="utf-8")  # written the way the published file is, not by us
    recs = D.read_llava_json(p)
    assert recs == SAMPLE
    D.write_llava_json(tmp_path / "out.json", recs)
    assert json.loads((tmp_path / "out.json").read_text()) == SAMPLE
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversations": [{"from": "human"}]}]))
    with pytest.raises(DataError, match=r"bad.json\[0\].conversations\[0\]"):
        D.read_llava_json(bad)
    bad.write_bytes(b"[\xff]")
    with pytest.raises(DataError, match="not UTF-8"):
        D.read_llava_json(bad)


def test_wub_jsonl_round_trip_and_errors(tmp_path):
    rows = [{"image": "eval/0001.png", "question_id": 17, "Q": "Is there a navigation bar?", "A": "Yes"},
            {"image": "eval/0002.png", "question_id": 18, "Q": "Is the background dark?", "A": "No", "extra": 1}]
    p = tmp_path / "Web2Code_eval.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert D.read_wub_jsonl(p) == rows
    D.write_wub_jsonl(tmp_path / "o.jsonl", rows)
    assert D.read_wub_jsonl(tmp_path / "o.jsonl") == rows
    p.write_text(json.dumps({"image": "a", "Q": "q", "A": "Yes"}) + "\n")
    with pytest.raises(DataError, match=r"jsonl:1: missing key\(s\) \['question_id'\]"):
        D.read_wub_jsonl(p)


def test_templates_vary_and_qa_is_balanced_and_true():
    rng = random.Random(0)
    pages = [D.make_page(rng, f"p{i}", ("modern", "bootstrap")[i % 2]) for i in range(30)]
    assert len({p.html for p in pages}) == 30
    assert {p.facts["scheme"] for p in pages} == set(D.SCHEMES)
    assert {p.facts["columns"] for p in pages} == {1, 2, 3}
    assert any(D.BOOTSTRAP_LINK in p.html for p in pages) and any(D.BOOTSTRAP_LINK not in p.html for p in pages)
    n_yes = n_no = 0
    for p in pages:
        qa = D.qa_pairs(p, rng, 6)
        assert sum(a == "Yes" for _, a in qa) == sum(a == "No" for _, a in qa) >= 2
        for q, a in qa:  # the answers follow from the page itself
            if q == "Does the webpage have a table?":
                assert (a == "Yes") == ("<table" in p.html)
            if q.startswith("Is there a button labelled"):
                label = q.split("'")[1]
                assert (a == "Yes") == (f">{label}</button>" in p.html)
        n_yes += sum(a == "Yes" for _, a in qa)
        n_no += sum(a == "No" for _, a in qa)
    assert n_yes == n_no


needs_browser = pytest.mark.usefixtures("real_browser")


@needs_browser
def test_build_corpus_renders_and_writes_both_files(tmp_path):
    import playwright  # noqa: F401  (installed by scripts/setup.sh: the web extra)
    from jaxlm.web.render import RenderOptions

    s = D.build_corpus(tmp_path, 2, seed=1, options=RenderOptions(width=640, height=400), qa_per_page=4)
    assert s["rendered"] == 2 and s["failed"] == {} and s["yes"] == s["no"] == 4
    assert s["bootstrap_css"] == "django-bootstrap-static 5.3.3"
    recs = D.read_llava_json(tmp_path / "web2code.json")
    assert recs[1]["style"] == "bootstrap" and recs[1]["conversations"][0]["value"].startswith("<image>\n")
    # the stage-1 caption is written from the page's own structure (its title is in the HTML)
    title = recs[0]["caption"].split("titled '")[1].split("'")[0]
    assert recs[0]["caption"].startswith("A modern webpage about ") and f"<h1>{title}</h1>" in recs[0][
        "conversations"][1]["value"]
    assert (tmp_path / recs[0]["image"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(D.read_wub_jsonl(tmp_path / "wub.jsonl")) == 8


def test_pydoc_held_out_pages_are_real_html():
    pages = D.pydoc_pages(("json", "colorsys"))
    assert [n for n, _ in pages] == ["json", "colorsys"]
    assert all(h.lstrip().lower().startswith("<!doctype html") for _, h in pages)
    assert "rgb_to_hsv" in pages[1][1]
    with pytest.raises(DataError, match="no_such_module_xyz"):
        D.pydoc_pages(("no_such_module_xyz",))


def test_cli_scores_files_and_renders(tmp_path, capsys):
    from jaxlm.web.__main__ import main

    res = tmp_path / "results.jsonl"
    res.write_text(json.dumps({"q_id": 1, "pred": "Yes</s>", "actual": "Yes"}) + "\n"
                   + json.dumps({"q_id": 2, "pred": "No", "actual": "Yes"}) + "\n")
    assert main(["wub", str(res)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 50.0
    assert main(["wub", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in json.loads(capsys.readouterr().out)["error"]
    if not (shutil.which("chromium") or shutil.which("google-chrome")):
        return
    import playwright  # noqa: F401  (installed by scripts/setup.sh: the web extra)
    from jaxlm.web.render import shared_renderer

    page = tmp_path / "p.html"
    page.write_text("<p style='margin:0'>hi</p>")
    assert main(["render", str(page), "-o", str(tmp_path / "p.png"), "--width", "120", "--height", "80"],
                renderer=shared_renderer()) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and (out["width"], out["height"]) == (120, 80)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
