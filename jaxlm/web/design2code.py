"""Design2Code's automatic metrics (NoviScl/Design2Code, visual_score.py::visual_eval_v3_multi and
ocr_free_utils.py), written from their definitions; both sides need HTML.

Text blocks without OCR (the recolour-and-render trick): the page is rendered once as it is, then with every
element's background made transparent and every text-bearing tag (p, h1-h6, div, span, a, b, li, table, td, th,
button, footer, header, figcaption) given a unique colour from a 16-level pool (colour: X !important;
opacity: 1 !important), then again with each colour shifted by +50 (mod 256). Pixels whose colour moved by +50
(+-8 per channel) are text pixels. Each text node takes the colour of its nearest recoloured ancestor; its block is
the bounding box of the text pixels within +-4 of that colour (normalised x, y, w, h), its colour the mean colour of
those pixels in the unmodified screenshot, its text the node's text lower-cased. Blocks with identical boxes are
merged. (Here the three screenshots come from ONE page load: the recolouring is done in the DOM between shots.)

Matching: cost = -SequenceMatcher ratio of the texts; adjacent blocks on either side are merged while that improves
the matched costs (difference of means > 0.05); the final Hungarian matching adds the context bonus
(0.1 x the best neighbouring costs, window 1); matches with text similarity < 0.5 are dropped.

Scores: Block-Match = matched areas (both sides) / (matched + unmatched areas); Text = mean similarity of matched
pairs; Position = mean of 1 - max(|dx|, |dy|) of the box centres; Colour = mean of max(0, 1 - CIEDE2000 / 100).
CLIP (on text-inpainted screenshots) needs local CLIP weights: pass `clip_fn`; without it `final` is None and the
four components are reported on their own (their mean is NOT a Design2Code score). No blocks or no matches: all
four components are 0 (as the original), with `note` saying why.
"""

from __future__ import annotations

import functools
import json
from copy import deepcopy
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Callable, Sequence

import numpy as np

from jaxlm.errors import DataError
from jaxlm.web.color import color_similarity

__all__ = ["TEXT_TAGS", "Block", "extract_blocks", "match_blocks", "D2CScores", "score_blocks", "design2code",
           "color_pool", "mean_scores", "preprocess_prediction", "cut_repetition"]

TEXT_TAGS = ("p", "h1", "h2", "h3", "h4", "h5", "h6", "div", "span", "a", "b", "li", "table", "td", "th", "button",
             "footer", "header", "figcaption")


def color_pool(offset: int = 0) -> list[tuple[int, int, int]]:
    """The 4096 colours, in the order they are handed out (the original pops from the end of its list)."""
    vals = range(10, 251, 16)
    pool = [((r + offset) % 256, (g + offset) % 256, (b + offset) % 256) for r in vals for g in vals for b in vals]
    return pool[::-1]


_RECOLOUR_JS = """(args) => {
  const [tags, pool, first] = args;
  const sel = tags.join(',');
  if (first) {
    for (const el of document.querySelectorAll('*'))
      el.style.setProperty('background-color', 'rgba(255, 255, 255, 0.0)', 'important');
  }
  const els = Array.from(document.querySelectorAll(sel));
  const n = Math.min(els.length, pool.length);
  for (let i = 0; i < n; i++) {
    const c = pool[i];
    els[i].style.setProperty('color', `rgb(${c[0]}, ${c[1]}, ${c[2]})`, 'important');
    els[i].style.setProperty('opacity', '1', 'important');
    els[i].dataset.jaxlmD2c = String(i);
  }
  if (!first) return null;
  const out = [];
  const body = document.body;
  if (!body) return out;
  const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    const t = node.nodeValue.trim();
    if (!t) continue;
    const p = node.parentElement;
    if (!p || p.closest('script,style,noscript,template')) continue;
    const owner = p.closest('[data-jaxlm-d2c]');
    out.push([t, owner ? Number(owner.dataset.jaxlmD2c) : -1]);
  }
  return out;
}"""


@dataclass
class Block:
    text: str
    bbox: tuple  # (x, y, w, h), normalised by the screenshot's width and height
    color: tuple  # mean RGB of the block's text pixels in the unmodified screenshot

    def area(self) -> float:
        return self.bbox[2] * self.bbox[3]


def _png_array(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def extract_blocks(renderer, html: str | bytes, options=None, prepare: str | None = None):
    """(blocks, RenderResult of the unmodified page). A failed render returns ([], result) with result.ok False.
    `prepare`: JavaScript run after load, before the first screenshot (design2code uses it for predictions)."""
    tags = list(TEXT_TAGS)
    p0, p1 = color_pool(0), color_pool(50)
    res = renderer.render(html, options, prepare=prepare, passes=[f"({_RECOLOUR_JS})({json.dumps([tags, p0, True])})",
                                                 f"({_RECOLOUR_JS})({json.dumps([tags, p1, False])})"])
    if not res.ok:
        return [], res
    (nodes, shot1), (_, shot2) = res.passes
    orig, a1, a2 = _png_array(res.png), _png_array(shot1), _png_array(shot2)
    if not (orig.shape == a1.shape == a2.shape):
        raise DataError(f"design2code: the recoloured screenshots changed size {orig.shape} {a1.shape} {a2.shape}")
    h, w = orig.shape[:2]
    shifted = np.all(np.abs(((a1 + 50) % 256) - a2) <= 8, axis=-1)
    ys, xs = np.nonzero(shifted)
    cols = a1[ys, xs]
    blocks = []
    for text, idx in nodes or []:
        if idx < 0 or idx >= len(p0):
            continue  # no recoloured ancestor: the original gives it black, which never shifts
        m = np.all(np.abs(cols - np.asarray(p0[idx], np.int16)) <= 4, axis=-1)
        if not m.any():
            continue
        yy, xx = ys[m], xs[m]
        y0, y1, x0, x1 = yy.min(), yy.max(), xx.min(), xx.max()
        color = tuple(int(c) for c in orig[yy, xx].mean(axis=0).astype(int))
        blocks.append(Block(text.lower(), (float(x0 / w), float(y0 / h), float((x1 - x0 + 1) / w), float((y1 - y0 + 1) / h)),
                            color))
    return _merge_by_bbox(blocks), res


def _merge_by_bbox(blocks: list[Block]) -> list[Block]:
    out: dict[tuple, Block] = {}
    for b in blocks:
        if b.bbox in out:
            e = out[b.bbox]
            e.text += " " + b.text
            e.color = tuple((x + y) / 2 for x, y in zip(e.color, b.color))
        else:
            out[b.bbox] = Block(b.text, b.bbox, b.color)
    return list(out.values())


@functools.lru_cache(maxsize=200_000)
def _sim(a: str, b: str) -> float:
    return SequenceMatcher(None, a, b).ratio()


def _cost(A: list[Block], B: list[Block]) -> np.ndarray:
    return np.array([[-_sim(a.text, b.text) for b in B] for a in A], dtype=np.float64).reshape(len(A), len(B))


def _context(cost: np.ndarray, bonus: float, window: int) -> np.ndarray:
    if window <= 0 or bonus == 0:
        return cost
    n, m = cost.shape
    adj = cost.copy()
    for i in range(n):
        for j in range(m):
            if adj[i, j] >= -0.5:
                continue
            near = np.sort(cost[max(0, i - window):i + window + 1, max(0, j - window):j + window + 1].ravel())[::-1]
            near = np.delete(near, np.where(near == cost[i, j])[0][0])
            adj[i, j] += bonus * near[-window * 2:].sum()
    return adj


def _hungarian(A, B, bonus, window):
    from scipy.optimize import linear_sum_assignment

    cost = _context(_cost(A, B), bonus, window)
    r, c = linear_sum_assignment(cost)
    return list(zip(r.tolist(), c.tolist())), cost[r, c].tolist()


def _merge2(a: Block, b: Block) -> Block:
    x0, y0 = min(a.bbox[0], b.bbox[0]), min(a.bbox[1], b.bbox[1])
    x1 = max(a.bbox[0] + a.bbox[2], b.bbox[0] + b.bbox[2])
    y1 = max(a.bbox[1] + a.bbox[3], b.bbox[1] + b.bbox[3])
    return Block(a.text + " " + b.text, (x0, y0, x1 - x0, y1 - y0),
                 tuple(int(p + q) // 2 for p, q in zip(a.color, b.color)))


def _diff_of_means(l1: list[float], l2: list[float]) -> float:
    from collections import Counter

    c1, c2 = Counter(l1), Counter(l2)
    for e in set(l1) & set(l2):
        k = min(c1[e], c2[e])
        c1[e] -= k
        c2[e] -= k
    u1, u2 = list(c1.elements()), list(c2.elements())
    m1 = sum(u1) / len(u1) if u1 else 0
    m2 = sum(u2) / len(u2) if u2 else 0
    if m1 - m2 > 0:
        return m1 - m2 if min(u1) > min(u2) else 0.0
    return m1 - m2


def _merge_by_list(blocks: list[Block], merges: list) -> list[Block]:
    pop = []
    while merges:
        i, j = merges[0][0], merges[0][1]
        blocks[i] = _merge2(blocks[i], blocks[j])
        pop.append(j)
        merges = [m for m in merges[1:] if m[0] not in (i, j) and m[1] not in (i, j)]
    for k in sorted(pop, reverse=True):
        if k < len(blocks):
            blocks.pop(k)
    return blocks


def _merge_side(X: list[Block], other: list[Block], current: list[float], x_first: bool) -> tuple[list, bool]:
    """Try merging each adjacent pair of X; keep the merges whose matching improves (difference of means > 0.05).
    Only the merged row changes, so each candidate's cost matrix is the current one with one row replaced and
    one deleted (the same matrix the original rebuilds from scratch, in the same orientation: prediction rows)."""
    from scipy.optimize import linear_sum_assignment

    if len(X) < 2:
        return X, False
    base = _cost(X, other) if x_first else _cost(other, X).T  # rows: X
    merges = []
    for i in range(len(X) - 1):
        t = X[i].text + " " + X[i + 1].text
        row = [-_sim(t, o.text) for o in other] if x_first else [-_sim(o.text, t) for o in other]
        c = np.delete(base, i + 1, axis=0)
        c[i] = row
        if not x_first:
            c = c.T
        r, k = linear_sum_assignment(c)
        d = _diff_of_means(current, c[r, k].tolist())
        if d > 0.05:
            merges.append([i, i + 1, d])
    if not merges:
        return X, False
    merges.sort(key=lambda m: m[2], reverse=True)
    return _merge_by_list(X, merges), True


def match_blocks(A: list[Block], B: list[Block], consecutive_bonus: float = 0.1, window_size: int = 1,
                 max_rounds: int = 50):
    """Design2Code's find_possible_merge + the final matching: (A merged, B merged, [(i, j, text similarity)])
    with pairs below 0.5 similarity dropped."""
    A, B = deepcopy(A), deepcopy(B)
    for _ in range(max_rounds):
        _, cur = _hungarian(A, B, 0.0, 1)
        A, ca = _merge_side(A, B, cur, True)
        if ca:
            _, cur = _hungarian(A, B, 0.0, 1)
        B, cb = _merge_side(B, A, cur, False)
        if not (ca or cb):
            break
    pairs, _ = _hungarian(A, B, consecutive_bonus, window_size)
    out = []
    for i, j in pairs:
        s = _sim(A[i].text, B[j].text)
        if s >= 0.5:
            out.append((i, j, s))
    return A, B, out


@dataclass
class D2CScores:
    block_match: float
    text: float
    position: float
    color: float
    clip: float | None = None
    n_pred_blocks: int = 0
    n_ref_blocks: int = 0
    n_matched: int = 0
    note: str | None = None  # "no blocks in the prediction", "render failed: ...", ...
    repetition_cut: bool = False  # the prediction was cut at degenerate repetition before rendering

    @property
    def final(self) -> float | None:
        """0.2 x (block + text + position + colour + CLIP): only with a CLIP score."""
        if self.clip is None:
            return None
        return 0.2 * (self.block_match + self.text + self.position + self.color + self.clip)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("block_match", "text", "position", "color", "clip", "n_pred_blocks",
                                           "n_ref_blocks", "n_matched", "note", "repetition_cut")}
        d["final"] = self.final
        return d


def score_blocks(pred: list[Block], ref: list[Block]) -> D2CScores:
    """The four components from two block lists (visual_eval_v3_multi without CLIP)."""
    if not pred or not ref:
        return D2CScores(0.0, 0.0, 0.0, 0.0, None, len(pred), len(ref), 0,
                         "no blocks detected in the " + ("prediction" if not pred else "reference"))
    pm, rm, matching = match_blocks(pred, ref)
    if not matching:
        return D2CScores(0.0, 0.0, 0.0, 0.0, None, len(pred), len(ref), 0, "no matched blocks")
    mi, mj = {i for i, _, _ in matching}, {j for _, j, _ in matching}
    unmatched = sum(b.area() for k, b in enumerate(pm) if k not in mi) + \
        sum(b.area() for k, b in enumerate(rm) if k not in mj)
    matched, texts, pos, cols = [], [], [], []
    for i, j, s in matching:
        a, b = pm[i], rm[j]
        matched.append(a.area() + b.area())
        texts.append(s)
        ca = (a.bbox[0] + a.bbox[2] / 2, a.bbox[1] + a.bbox[3] / 2)
        cb = (b.bbox[0] + b.bbox[2] / 2, b.bbox[1] + b.bbox[3] / 2)
        pos.append(1 - max(abs(cb[0] - ca[0]), abs(cb[1] - ca[1])))
        cols.append(color_similarity(a.color, b.color))
    total = sum(matched) + unmatched
    return D2CScores(float(sum(matched) / total) if total else 0.0, float(np.mean(texts)), float(np.mean(pos)),
                     float(np.mean(cols)), None, len(pred), len(ref), len(matching))


def cut_repetition(text: str, chunk_size: int = 100, repetition_threshold: int = 5,
                   similarity_threshold: float = 0.8) -> tuple[str, bool]:
    """Design2Code's check_repetitive_content: split the tag-free text into 100-character chunks; a chunk at least
    0.8 similar to an earlier distinct chunk joins that chunk's list; once a list has 5 members the text is cut
    where its first member starts (in the original HTML). Returns (text, whether it was cut)."""
    import re

    clean_parts, pos_map = [], []
    last = 0
    for m in re.finditer(r"<.*?>", text):
        clean_parts.append(text[last:m.start()])
        pos_map.extend(range(last, m.start()))
        last = m.end()
    clean_parts.append(text[last:])
    pos_map.extend(range(last, len(text)))
    clean = "".join(clean_parts)
    chunks = [clean[i:i + chunk_size] for i in range(0, len(clean), chunk_size)]
    seen: dict[str, list[int]] = {}
    cut = None
    for i, chunk in enumerate(chunks):
        for prev, idx in seen.items():
            if _sim(chunk, prev) >= similarity_threshold:
                idx.append(i)
                if len(idx) >= repetition_threshold:
                    c = idx[0] * chunk_size
                    p = pos_map[c] if c < len(pos_map) else len(text)
                    cut = p if cut is None else min(cut, p)
                break
        else:
            seen[chunk] = [i]
    return (text, False) if cut is None else (text[:cut], True)


# Design2Code's truncate_repeated_html_elements, in the DOM: an element whose outerHTML has already occurred
# max_count times (document order) is removed.
_TRUNCATE_JS = """(maxCount) => {
  const counts = new Map();
  let removed = 0;
  for (const el of Array.from(document.querySelectorAll('*'))) {
    const k = el.outerHTML;
    const n = (counts.get(k) || 0) + 1;
    counts.set(k, n);
    if (n > maxCount) { el.remove(); removed++; }
  }
  return removed;
}"""


def preprocess_prediction(html: str | bytes, *, report: bool = False):
    """Design2Code's pre-processing of a prediction before rendering: cut degenerate repetition
    (cut_repetition), and wrap text that has no <html> tag in <html><body><p>...</p></body></html> (unescaped, as
    the original). The removal of elements repeated more than 50 times happens in the page (design2code).
    With report=True returns (text, whether the repetition cut applied)."""
    import re

    text = html.decode("utf-8", errors="replace") if isinstance(html, (bytes, bytearray)) else html
    if not isinstance(text, str):
        raise DataError(f"prediction: expected str or bytes, got {type(html).__name__}")
    text, cut = cut_repetition(text)
    if not re.search(r"<html[^>]*>", text, re.IGNORECASE):
        text = f"<html><body><p>{text}</p></body></html>"
    return (text, cut) if report else text


def design2code(renderer, pred_html: str | bytes, ref_html: str | bytes | None, options=None, *,
                ref: tuple | None = None, clip_fn: Callable | None = None, max_repeats: int = 50,
                prepare_html: Callable | None = None) -> D2CScores:
    """Render both pages, extract blocks, score. A prediction that fails to render scores 0 with the reason in
    `note`; a reference that fails raises DataError (the benchmark itself is broken). clip_fn(pred_image,
    ref_image, pred_bboxes, ref_bboxes) -> float, given local CLIP weights (Design2Code inpaints the text boxes
    with cv2 TELEA, radius 3, and resizes to a square of the short side before CLIP ViT-B/32).
    `ref`: the reference's extract_blocks(...) result, to score many predictions against one reference.
    `prepare_html(text)`: applied after the prediction's pre-processing, before rendering (e.g.
    jaxlm.web.data.for_rendering, which inlines Bootstrap's CSS: pre-processing must see the model's text, not 230 KB
    of inlined CSS, whose repeated chunks the repetition cut would also truncate)."""
    if ref is None and ref_html is None:
        raise DataError("design2code: give the reference HTML or its extract_blocks result (ref=)")
    ref_blocks, ref_res = ref if ref is not None else extract_blocks(renderer, ref_html, options)
    if not ref_res.ok:
        raise DataError(f"design2code: the reference page did not render ({ref_res.error})")
    pred_text, cut = preprocess_prediction(pred_html, report=True)
    if prepare_html is not None:
        pred_text = prepare_html(pred_text)
    pred_blocks, pred_res = extract_blocks(renderer, pred_text, options,
                                           prepare=f"({_TRUNCATE_JS})({int(max_repeats)})")
    if not pred_res.ok:
        return D2CScores(0.0, 0.0, 0.0, 0.0, 0.0 if clip_fn else None, 0, len(ref_blocks), 0,
                         f"render failed: {pred_res.error}", cut)
    s = score_blocks(pred_blocks, ref_blocks)
    s.repetition_cut = cut
    if clip_fn is not None:
        s.clip = float(clip_fn(pred_res.image(), ref_res.image(), [b.bbox for b in pred_blocks],
                               [b.bbox for b in ref_blocks]))
    return s


def mean_scores(scores: Sequence[D2CScores]) -> dict:
    """Plain means over examples (the original's dataset score); `final` only if every example has CLIP."""
    if not scores:
        raise DataError("mean_scores: no scores")
    keys = ("block_match", "text", "position", "color")
    out = {k: float(np.mean([getattr(s, k) for s in scores])) for k in keys}
    finals = [s.final for s in scores]
    out["final"] = float(np.mean(finals)) if all(f is not None for f in finals) else None
    out["n"] = len(scores)
    out["notes"] = sum(s.note is not None for s in scores)
    out["repetition_cut"] = sum(s.repetition_cut for s in scores)
    return out
