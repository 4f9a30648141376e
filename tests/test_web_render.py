"""jaxlm.web.render with the real headless Chromium: pixels, modes, the network sandbox, time and size limits."""

import http.server
import io
import threading

import pytest

from jaxlm.web.render import RenderOptions, decode_html, find_chromium

pytestmark = pytest.mark.usefixtures("real_browser")

SMALL = RenderOptions(width=200, height=100, timeout_s=10.0)


@pytest.fixture(scope="module")
def r():
    import playwright  # noqa: F401  (installed by scripts/setup.sh: the web extra)
    from jaxlm.web.render import shared_renderer

    return shared_renderer()


def _px(res, x, y):
    return res.image().getpixel((x, y))


def test_known_page_pixels_full_page_and_viewport(r):
    html = ("<html><body style='margin:0;background:rgb(255,0,0)'>"
            "<div style='width:50px;height:40px;background:rgb(0,0,255)'></div>"
            "<div style='height:300px;background:rgb(0,128,0)'></div></body></html>")
    full = r.render(html, SMALL)
    assert full.ok, full.error
    assert (full.width, full.height, full.page_height) == (200, 340, 340)
    assert _px(full, 10, 10) == (0, 0, 255)  # the blue box
    assert _px(full, 100, 10) == (255, 0, 0)  # body background right of it
    assert _px(full, 100, 300) == (0, 128, 0)  # below the fold: only in the full-page shot
    view = r.render(html, SMALL.replace(full_page=False))
    assert view.ok and (view.width, view.height) == (200, 100)
    assert _px(view, 10, 10) == (0, 0, 255)


def test_page_down_quirk_scrolls_before_the_viewport_shot(r):
    html = ("<body style='margin:0'><div style='height:40px;background:rgb(0,0,255)'></div>"
            "<div style='height:2000px;background:rgb(255,255,0)'></div></body>")
    o = SMALL.replace(full_page=False, page_down=True, page_down_wait_s=0.2)
    res = r.render(html, o)
    assert res.ok, res.error
    assert _px(res, 5, 5) == (255, 255, 0)  # scrolled past the blue band
    assert _px(r.render(html, o.replace(page_down=False)), 5, 5) == (0, 0, 255)
    w = RenderOptions.wcgb_original()
    assert (w.width, w.height, w.full_page, w.page_down, w.settle_s) == (1920, 1080, False, True, 5.0)


class _Counter(http.server.BaseHTTPRequestHandler):
    hits = []

    def do_GET(self):  # noqa: N802
        _Counter.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"x")

    def log_message(self, *a):
        pass


def test_network_requests_never_leave_the_page(r):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{port}"
        html = (f"<link rel=stylesheet href='{base}/css'><img src='{base}/img'>"
                f"<iframe src='{base}/frame'></iframe><script src='{base}/js'></script>"
                f"<script>fetch('{base}/fetch').catch(()=>{{}}); try {{ new WebSocket('ws://127.0.0.1:{port}/ws') }}"
                f" catch (e) {{}}; navigator.sendBeacon && navigator.sendBeacon('{base}/beacon', 'x');</script>"
                "<p>offline</p>")
        res = r.render(html, SMALL.replace(settle_s=0.5))
        assert res.ok, res.error
        assert res.blocked_requests >= 4
        assert _Counter.hits == []
        # the server is reachable from here, so the test can fail
        import urllib.request

        urllib.request.urlopen(f"{base}/direct", timeout=5).read()
        assert _Counter.hits == ["/direct"]
    finally:
        srv.shutdown()


def test_infinite_loop_and_never_finishing_load_are_counted_failures(r):
    quick = SMALL.replace(timeout_s=0.5, shot_timeout_s=0.5)
    pages = ["<script>while (true) {}</script>",  # load never fires
             "<p>x</p><script>setTimeout(() => { while (true) {} }, 0)</script>",  # hangs after load
             ]
    out = r.render_many(pages, quick)
    assert [x.ok for x in out][:1] == [False] and out[0].error.startswith(("timeout", "hung"))
    assert out[1].ok is False and out[1].error.split(":")[0] in ("timeout", "hung"), out[1].error
    assert len(out) == 2
    assert r.render("<p>after</p>", SMALL).ok  # the same browser goes on


def test_huge_pages_are_cut(r):
    tall = "<body style='margin:0'><div style='height:50000px;background:rgb(0,0,255)'></div></body>"
    res = r.render(tall, SMALL.replace(max_height=500))
    assert res.ok and res.clipped and res.height == 500 and res.page_height == 50000
    big = "<p>" + "a" * 3000 + "</p>"
    res = r.render(big, SMALL.replace(max_html_bytes=1000))
    assert res.ok and res.truncated


def test_invalid_utf8_is_replaced_and_counted(r):
    raw = "<p>caf\u00e9 ".encode() + b"\xff\xfe bad \xc3</p>"
    res = r.render(raw, SMALL)
    assert res.ok and res.decode_errors == 3
    text, n, cut = decode_html("é".encode() * 3, 5)  # a cut inside a character is not an input error
    assert (text, n, cut) == ("éé", 0, True)
    assert decode_html("a\ud800b", 100) == ("a\ufffdb", 1, False)


def test_find_chromium_env_override(monkeypatch, tmp_path):
    from jaxlm.web.render import BrowserNotFoundError

    monkeypatch.setenv("JAXLM_CHROMIUM", str(tmp_path / "nope"))
    with pytest.raises(BrowserNotFoundError, match="JAXLM_CHROMIUM"):
        find_chromium()


def test_renders_share_no_page_state_and_javascript_can_be_off(r):
    assert r.render("<script>window.leak = 1; document.title = 'x'</script>", SMALL).ok
    nxt = r.render("<p>next</p>", SMALL, prepare="window.leak === undefined && document.title === ''")
    assert nxt.ok and nxt.prepared is True
    js = "<body style='margin:0'><div id=d style='height:100px;background:rgb(0,0,255)'></div>" \
         "<script>document.getElementById('d').style.background = 'rgb(255,0,0)'</script></body>"
    assert _px(r.render(js, SMALL), 5, 5) == (255, 0, 0)
    assert _px(r.render(js, SMALL.replace(javascript=False)), 5, 5) == (0, 0, 255)


def test_a_crashed_page_is_a_counted_failure_and_the_next_renders(r):
    import time

    stop = threading.Event()

    def killer():  # once the page exists (render sets _current), kill its renderer while it settles for 3 s
        while not stop.is_set():
            if r._current is not None:
                r._kill_renderers()
                return
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        res = r.render("<p>doomed</p>", SMALL.replace(settle_s=3.0))
    finally:
        stop.set()
        t.join()
    assert not res.ok and res.error.startswith("crash: the page crashed"), res.error
    assert r.render("<p>fine</p>", SMALL).ok
