"""Item 7, bad input: clear errors or counted failures, never a crash or a silent drop."""

import os
import signal

import numpy as np
import pytest

from jaxlm.errors import DataError, ShapeError
from jaxlm.web import data as D

needs_browser = pytest.mark.usefixtures("real_browser")


def test_images_of_the_wrong_size(tmp_path):
    from PIL import Image

    Image.new("RGB", (60, 30), (255, 0, 0)).save(tmp_path / "wide.png")
    x = D.load_image(tmp_path / "wide.png", 32)  # padded to a square with the mean colour, then resized
    assert x.shape == (32, 32, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[16, 16], [1, 0, 0], atol=1e-6)
    assert D.load_image(tmp_path / "wide.png", 32, "resize").shape == (32, 32, 3)
    with pytest.raises(ShapeError, match=r"wide.png: image is 60x30, expected 32x32"):
        D.load_image(tmp_path / "wide.png", 32, "strict")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="junk.png: not a readable image"):
        D.load_image(tmp_path / "junk.png", 32)
    with pytest.raises(DataError, match="missing.png: no such image"):
        D.load_image(tmp_path / "missing.png", 32)


def test_cut_repetition_and_wrapping():
    from jaxlm.web.design2code import cut_repetition, preprocess_prediction

    head = "<html><body><h1>Shop</h1><p>" + "Unique opening text about the shop and its goods. " * 1
    loop = "<div>" + "buy now and save money today, " * 60 + "</div>"
    text, cut = cut_repetition(head + loop)
    assert cut and text.startswith(head) and len(text) < len(head + loop) // 2
    assert cut_repetition("<p>short and varied</p>") == ("<p>short and varied</p>", False)
    assert preprocess_prediction("plain") == "<html><body><p>plain</p></body></html>"
    assert preprocess_prediction(b"<html><b>x</b></html>") == "<html><b>x</b></html>"
    with pytest.raises(DataError, match="expected str or bytes"):
        preprocess_prediction(None)


@needs_browser
def test_garbage_predictions_are_scored_or_counted_never_crash():
    import playwright  # noqa: F401  (installed by scripts/setup.sh: the web extra)
    from jaxlm.web.design2code import design2code, extract_blocks
    from jaxlm.web.render import RenderError, RenderOptions, shared_renderer

    r = shared_renderer()
    o = RenderOptions(width=400, height=300, timeout_s=5.0, shot_timeout_s=5.0)  # ordinary pages: no race
    ref = "<html><body><h1>Title</h1><p>Some text here.</p></body></html>"
    ref_x = extract_blocks(r, ref, o)
    for pred in [b"\xff\xfe\x00garbage\x80<div><p>unclosed <b>tags"]:
        s = design2code(r, pred, None, o, ref=ref_x)
        assert 0.0 <= s.block_match <= 1.0 and s.final is None and s.note is not None
    assert design2code(r, "Some text here.", None, o, ref=ref_x).text == 1.0  # plain text is wrapped in <p>
    looped = "<html><body><ul>" + "<li>item</li>" * 60 + "</ul></body></html>"  # a degenerate generation
    s = design2code(r, looped, None, o, ref=ref_x)
    assert s.n_pred_blocks == 50  # elements repeated more than 50 times are removed (Design2Code)
    assert s.repetition_cut is False  # 60 x "item" is 240 characters: fewer than 5 chunks of 100
    intro = "<p>Quartz zebras vex jumpy fowl; big wolves hunt quickly, a lazy ox dozes by the misty fjord at dawn.</p>"
    s = design2code(r, "<html><body><p>Some text here.</p>" + intro * 2 + "<p>again and again and again</p>" * 40,
                    None, o, ref=ref_x)
    assert s.repetition_cut and s.text == 1.0
    s = design2code(r, "<script>while (true) {}</script>", None, o, ref=ref_x)  # never loads: scored 0 with the reason
    assert (s.block_match, s.text, s.position, s.color) == (0, 0, 0, 0) and s.note.startswith("render failed: timeout")
    with pytest.raises(RenderError, match="expected str or bytes"):
        r.render(None)
    with pytest.raises(DataError, match="reference page did not render"):
        design2code(r, ref, "<script>while (true) {}</script>", o)


@needs_browser
def test_a_dead_browser_is_relaunched_and_the_batch_goes_on():
    import playwright  # noqa: F401  (installed by scripts/setup.sh: the web extra)
    from jaxlm.web.render import RenderOptions, _proc_table, shared_renderer

    r = shared_renderer()
    o = RenderOptions(width=100, height=100)
    assert r.render("<p>a</p>", o).ok
    pid = r._browser_pid(_proc_table())
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    before = r.stats["relaunches"]
    out = r.render_many(["<p>b</p>", "<p>c</p>"], o)
    assert all(x.ok for x in out), [x.error for x in out]
    assert r.stats["relaunches"] == before + 1
