"""recipes.web2code's WCGB path: --judge URL runs jaxlm.web.wcgb through the project's HTTP client (cache, ledger)
against a local OpenAI-compatible server; without a judge the table says WCGB was not run. And the WUB questions of
the corpus builder are balanced per question template (the question text alone predicts ~50%)."""

import base64
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jaxlm.web import data as D
from jaxlm.web.render import RenderResult
from recipes import web2code as W

GOOD = "8, 8, 8, 8\n6, 4, 9, 9, 9, 2"


class _Renderer:  # screenshots stand-in: the PNG bytes name the HTML (no browser needed)
    def render(self, html, options=None):
        return RenderResult(ok=True, png=b"\x89PNG" + html.encode(), error=None)


def _judge_server(bad_png: bytes):
    """Replies GOOD, or words without 10 numbers when the request carries bad_png; records the auth headers."""
    seen = {"auth": [], "calls": 0}
    marker = base64.b64encode(bad_png).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            seen["auth"].append(self.headers.get("Authorization"))
            seen["calls"] += 1
            text = "I cannot score this page." if marker in body else GOOD
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                              "usage": {"prompt_tokens": 100, "completion_tokens": 20}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, seen


def test_judge_runs_wcgb_through_the_http_client(tmp_path, monkeypatch):
    recs = [{"id": f"p{i}", "image": f"images/p{i}.png"} for i in range(3)]
    (tmp_path / "images").mkdir()
    for r in recs:
        (tmp_path / r["image"]).write_bytes(b"\x89PNGref" + r["id"].encode())
    preds = {"stage 2": ["<p>a</p>", "<p>bad</p>", "<p>c</p>"]}
    srv, seen = _judge_server(b"\x89PNG<p>bad</p>")
    monkeypatch.setenv("JAXLM_TEST_KEY", "sk-test")
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        judge, ledger = W.make_judge(url, "judge-model", "JAXLM_TEST_KEY", tmp_path / "cache.sqlite")
        out = W.wcgb_tables(_Renderer(), preds, recs, tmp_path, judge, tmp_path)
        rep = out["stage 2"]
        # the original's aggregation over the 2 parsed answers; the unparsable one is counted, not dropped
        assert rep["scored"] == 2 and rep["total"] == 3 and rep["parse_failures"] == 1
        assert rep["VSA"] == 8.0 and rep["CAD"] == 5.0 and rep["TCC"] == 9.0 and rep["UII"] == 2.0
        assert rep["Overall"] == 6.0
        assert seen["calls"] == 3 and set(seen["auth"]) == {"Bearer sk-test"}
        assert ledger.summary()["judge"]["calls"] == 3
        lines = (tmp_path / "wcgb_stage_2.jsonl").read_text().splitlines()
        assert len(lines) == 3 and {json.loads(x)["image_id"] for x in lines} == {"p0", "p1", "p2"}
        # a rerun resumes from the judge file: no new request
        assert W.wcgb_tables(_Renderer(), preds, recs, tmp_path, judge, tmp_path)["stage 2"] == rep
        assert seen["calls"] == 3
    finally:
        srv.shutdown()
        srv.server_close()
    res = {"wub_questions": 0, "heldout_pages": 3, "wub": {}, "design2code": {}, "design2code_pydoc": {},
           "times_s": {}, "load_avg": 0.0}
    assert "WCGB: not run" in W.format_table({**res, "wcgb": None})
    table = W.format_table({**res, "wcgb": {"judge": "judge-model", "sets": out}})
    assert "| stage 2 | 8.00 | 5.00 | 9.00 | 2.00 | 6.00 | 2/3 | 1 | 0 |" in table


def test_wub_questions_balanced_per_template():
    rng, bal, rows = random.Random(0), {}, []
    for i in range(60):
        page = D.make_page(rng, f"p{i}", ("modern", "bootstrap")[i % 2])
        qa = D.qa_pairs(page, rng, 6, bal)
        assert sum(a == "Yes" for _, a in qa) == 3 == sum(a == "No" for _, a in qa)
        rows += [{"Q": q, "A": a} for q, a in qa]
    counts = D.template_majority(rows, rows)["per_template"]
    assert len(counts) >= 9 and all(abs(no - yes) <= 1 for no, yes in counts.values()), counts
    assert D.template_majority(rows, rows)["accuracy"] < 52.0
    # without the shared balance the question template alone predicts more (the text prior the balance removes)
    rng = random.Random(0)
    free = [{"Q": q, "A": a} for i in range(60) for q, a in D.qa_pairs(D.make_page(rng, f"q{i}"), rng, 6)]
    assert D.template_majority(free, free)["accuracy"] > 55.0
