"""Web2Code data: the published formats, a synthetic page corpus built from templates, and a real held-out set.

Formats (the published files load unchanged):
- LLaVA conversation JSON (Web2Code.json, GPT4_QA.json, ...): a list of {"id", "image", "conversations":
  [{"from": "human"|"gpt", "value": ...}, ...]} (`image` may be absent for text-only records);
  read_llava_json / write_llava_json.
- WUB jsonl (Web2Code_eval.jsonl): one {"image", "question_id", "Q", "A"} per line; read_wub_jsonl / write_wub_jsonl.

Corpus: build_corpus(out_dir, n, seed) generates pages from templates (layouts, colour schemes, text, tables,
forms, nav bars; "modern" hand-written CSS and "bootstrap" pages that use Bootstrap 5.3.3's CSS from the
django-bootstrap-static package), renders them with the real browser and writes images/, web2code.json
(code-generation instructions, LLaVA format) and wub.jsonl (yes/no QA from each page's own structure, balanced
yes/no). pydoc_pages() is a held-out set no template made: pydoc.HTMLDoc pages of standard-library modules.
"""

from __future__ import annotations

import html as _html
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from jaxlm.errors import DataError, DataFileNotFoundError

__all__ = ["read_llava_json", "write_llava_json", "read_wub_jsonl", "write_wub_jsonl", "Page", "make_page",
           "qa_pairs", "question_template", "template_majority", "TITLE_WORDS", "build_corpus", "pydoc_pages", "bootstrap_css", "for_rendering", "BOOTSTRAP_LINK",
           "CODEGEN_INSTRUCTIONS", "load_image"]


# ---------------------------------------------------------------- published formats


def _load_json(path) -> Any:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _check_llava(rec: Any, where: str) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
    if "id" not in rec:
        raise DataError(f"{where}: missing key 'id'")
    if "image" in rec and not isinstance(rec["image"], str):
        raise DataError(f"{where}: 'image' must be a string path")
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: 'conversations' must be a non-empty list")
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}.conversations[{j}]: expected {{'from': str, 'value': str}}")
    return rec


def read_llava_json(path) -> list[dict]:
    """The records of a LLaVA conversation JSON file, validated (unknown extra keys are kept as they are)."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [_check_llava(r, f"{path}[{i}]") for i, r in enumerate(data)]


def write_llava_json(path, records: Iterable[dict]) -> None:
    records = [_check_llava(r, f"records[{i}]") for i, r in enumerate(records)]
    _atomic_write(path, json.dumps(records, ensure_ascii=False, indent=1))


_WUB_KEYS = ("image", "question_id", "Q", "A")


def read_wub_jsonl(path) -> list[dict]:
    """Rows of a WUB jsonl file ({image, question_id, Q, A}); blank lines are skipped, anything else is checked."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFileNotFoundError(f"{path}: no such file")
    rows = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{path}:{n}: not UTF-8") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected an object")
            missing = [k for k in _WUB_KEYS if k not in row]
            if missing:
                raise DataError(f"{path}:{n}: missing key(s) {missing} (a WUB row has {list(_WUB_KEYS)})")
            rows.append(row)
    return rows


def write_wub_jsonl(path, rows: Iterable[dict]) -> None:
    lines = []
    for i, r in enumerate(rows):
        missing = [k for k in _WUB_KEYS if k not in r]
        if missing:
            raise DataError(f"rows[{i}]: missing key(s) {missing}")
        lines.append(json.dumps(r, ensure_ascii=False))
    _atomic_write(path, "\n".join(lines) + ("\n" if lines else ""))


def _atomic_write(path, text: str) -> None:
    path = os.fspath(path)
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def load_image(path, size: int, mode: str = "pad") -> "np.ndarray":
    """An RGB image as float32 (size, size, 3) in [0, 1] for a vision tower of `size` pixels.

    mode="pad": LLaVA-1.5's `image_aspect_ratio pad` (expand to a square filled with the mean colour, centred,
    then resize); "resize": stretch to size x size; "strict": an image of another size is a ShapeError naming the
    file. A missing or unreadable file is a DataError naming it."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from jaxlm.errors import ShapeError

    if mode not in ("pad", "resize", "strict"):
        raise DataError(f"load_image: mode={mode!r}: expected 'pad', 'resize' or 'strict'")
    if not isinstance(size, int) or size <= 0:
        raise DataError(f"load_image: size={size!r}: expected a positive int")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFileNotFoundError(f"{path}: no such image")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    w, h = im.size
    if mode == "strict" and (w, h) != (size, size):
        raise ShapeError(f"{path}: image is {w}x{h}, expected {size}x{size} (use mode='pad' or 'resize')")
    if mode == "pad" and w != h:
        side = max(w, h)
        mean = tuple(int(c) for c in np.asarray(im).reshape(-1, 3).mean(axis=0))
        sq = Image.new("RGB", (side, side), mean)
        sq.paste(im, ((side - w) // 2, (side - h) // 2))
        im = sq
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32) / 255.0


# ---------------------------------------------------------------- templates

BOOTSTRAP_LINK = ('<link rel="stylesheet" '
                  'href="https://cdn.jsdelivr.net/npm/bootstrap@5.3.3/dist/css/bootstrap.min.css">')
_BOOTSTRAP_CSS: str | None = None


def bootstrap_css() -> str | None:
    """Bootstrap 5.3.3's CSS from the django-bootstrap-static package (the `web` extra), or None without it."""
    global _BOOTSTRAP_CSS
    if _BOOTSTRAP_CSS is None:
        try:
            from importlib import resources

            _BOOTSTRAP_CSS = (resources.files("bootstrap") / "static/bootstrap/css/bootstrap.min.css").read_text(
                encoding="utf-8")
        except (ImportError, FileNotFoundError, OSError):
            return None
    return _BOOTSTRAP_CSS


def for_rendering(page_html: str) -> str:
    """The page with the Bootstrap CDN link replaced by the packaged CSS inline (the renderer blocks the network).
    Raises DataError if a Bootstrap page is rendered without the package."""
    if BOOTSTRAP_LINK not in page_html:
        return page_html
    css = bootstrap_css()
    if css is None:
        raise DataError("a Bootstrap page needs the django-bootstrap-static package (pip install -e '.[web]')")
    return page_html.replace(BOOTSTRAP_LINK, "<style>" + css + "</style>")


SCHEMES = {  # name: (background, text, accent, accent text)
    "light blue": ("#ffffff", "#222222", "#1e66f5", "#ffffff"),
    "dark": ("#1e1e2e", "#e0e0e0", "#f38ba8", "#1e1e2e"),
    "green": ("#f4fbf4", "#1b3a1b", "#2e8b57", "#ffffff"),
    "orange": ("#fffaf3", "#3a2a1a", "#e67e22", "#ffffff"),
    "purple": ("#faf7ff", "#2b2340", "#7b4bd6", "#ffffff"),
    "grey": ("#f2f2f2", "#111111", "#555555", "#ffffff"),
}
TOPICS = {
    "bakery": (["Fresh Bread", "Pastries", "Cakes", "Coffee"], ["Sourdough", "Croissant", "Baguette", "Muffin"]),
    "travel": (["Destinations", "Hotels", "Flights", "Deals"], ["Lisbon", "Kyoto", "Nairobi", "Lima"]),
    "fitness": (["Classes", "Trainers", "Plans", "Schedule"], ["Yoga", "Cycling", "Boxing", "Pilates"]),
    "books": (["New Releases", "Authors", "Genres", "Events"], ["Poetry", "History", "Science", "Fiction"]),
    "software": (["Features", "Pricing", "Docs", "Support"], ["Basic", "Team", "Business", "Enterprise"]),
    "garden": (["Plants", "Tools", "Seeds", "Advice"], ["Tomato", "Basil", "Lavender", "Fern"]),
}
WORDS = ("quality service local friendly modern simple quick trusted open daily season best new fresh careful "
         "community expert handmade bright calm").split()
CODEGEN_INSTRUCTIONS = (
    "Please generate html code for the given image.",
    "Write the HTML and CSS that reproduce this webpage screenshot.",
    "Convert this screenshot of a webpage into HTML code.",
    "Generate the HTML code of this page, keeping its layout, colours and text.",
)
BOOTSTRAP_INSTRUCTION = "Generate HTML code that replicates the structure of this screenshot using Bootstrap layout."


@dataclass
class Page:
    id: str
    html: str  # the target code (Bootstrap pages link the CDN; for_rendering inlines the CSS)
    style: str  # "modern" | "bootstrap"
    facts: dict = field(default_factory=dict)


def _sentence(rng: random.Random, n: int = 10) -> str:
    w = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(w).capitalize() + "."


TITLE_WORDS = ("The", "Our", "My", "City")


def make_page(rng: random.Random, page_id: str, style: str | None = None) -> Page:
    """One page from the templates; `facts` records what the page contains (for QA and tests)."""
    style = style or rng.choice(["modern", "bootstrap"])
    if style not in ("modern", "bootstrap"):
        raise DataError(f"style={style!r}: expected 'modern' or 'bootstrap'")
    topic = rng.choice(sorted(TOPICS))
    sections, items = TOPICS[topic]
    scheme = rng.choice(sorted(SCHEMES))
    bg, fg, accent, accent_fg = SCHEMES[scheme]
    title = f"{rng.choice(TITLE_WORDS)} {topic.capitalize()} {rng.choice(['Hub', 'Corner', 'House', 'Place'])}"
    f: dict[str, Any] = {"topic": topic, "scheme": scheme, "title": title, "style": style}
    f["nav"] = rng.random() < 0.7
    f["table"] = rng.random() < 0.5
    f["form"] = rng.random() < 0.5
    f["footer"] = rng.random() < 0.6
    f["columns"] = rng.choice([1, 2, 3])
    f["button"] = rng.choice(["Sign up", "Learn more", "Contact us", "Buy now"])
    f["nav_items"] = sections[: rng.choice([2, 3, 4])] if f["nav"] else []
    f["cards"] = rng.sample(items, f["columns"])
    e = _html.escape
    bs = style == "bootstrap"
    parts = ["<!DOCTYPE html>", "<html>", "<head>", f"<title>{e(title)}</title>"]
    if bs:
        parts.append(BOOTSTRAP_LINK)
        parts.append(f"<style>body{{background:{bg};color:{fg}}} .accent{{background:{accent};color:{accent_fg}}}</style>")
    else:
        font = rng.choice(["Arial, sans-serif", "Georgia, serif", "Verdana, sans-serif", "'Courier New', monospace"])
        parts.append("<style>"
                     f"body{{margin:0;font-family:{font};background:{bg};color:{fg}}}"
                     f"nav{{background:{accent};padding:12px 24px}} nav a{{color:{accent_fg};margin-right:18px;text-decoration:none}}"
                     "main{padding:24px} .row{display:flex;gap:16px} .card{flex:1;padding:16px;border:1px solid #ccc;border-radius:8px}"
                     f"button{{background:{accent};color:{accent_fg};border:0;padding:10px 18px;border-radius:6px}}"
                     "table{border-collapse:collapse;margin-top:16px} td,th{border:1px solid #999;padding:6px 12px}"
                     "footer{padding:16px 24px;border-top:1px solid #ccc;font-size:14px}"
                     "input{padding:6px;margin:4px 0;display:block}"
                     "</style>")
    parts += ["</head>", "<body>"]
    if f["nav"]:
        links = "".join(f'<a href="#" class="{"nav-link accent" if bs else ""}">{e(s)}</a>' for s in f["nav_items"])
        parts.append(f'<nav class="{"nav accent p-2" if bs else ""}">{links}</nav>')
    parts.append(f'<main class="{"container py-4" if bs else ""}">')
    parts.append(f"<h1>{e(title)}</h1>")
    parts.append(f"<p>{e(_sentence(rng, 14))}</p>")
    cls_row, cls_col = ("row", "col card p-3") if bs else ("row", "card")
    cards = "".join(f'<div class="{cls_col}"><h3>{e(c)}</h3><p>{e(_sentence(rng, 8))}</p></div>' for c in f["cards"])
    parts.append(f'<div class="{cls_row}">{cards}</div>')
    if f["table"]:
        rows = "".join(f"<tr><td>{e(it)}</td><td>{rng.randint(2, 99)}.{rng.randint(0, 9)}0</td></tr>"
                       for it in rng.sample(items, 3))
        parts.append(f'<table class="{"table table-bordered w-50" if bs else ""}"><tr><th>Item</th><th>Price</th></tr>{rows}</table>')
    if f["form"]:
        parts.append(f'<form class="{"mt-3 w-50" if bs else ""}"><h2>Contact</h2>'
                     f'<input class="{"form-control" if bs else ""}" placeholder="Name">'
                     f'<input class="{"form-control" if bs else ""}" placeholder="Email"></form>')
    parts.append(f'<p><button class="{"btn accent mt-3" if bs else ""}">{e(f["button"])}</button></p>')
    parts.append("</main>")
    if f["footer"]:
        parts.append(f'<footer class="{"p-3 border-top" if bs else ""}">&copy; 2024 {e(title)}</footer>')
    parts += ["</body>", "</html>"]
    return Page(page_id, "\n".join(parts), style, f)


def page_caption(page: Page) -> str:
    """A one-sentence description from the page's own structure (the LLaVA stage-1 caption analogue)."""
    f = page.facts
    parts = [f"{f['columns']} card{'s' if f['columns'] > 1 else ''}"]
    parts += [what for key, what in (("nav", "a navigation bar"), ("table", "a table"), ("form", "a form"),
                                     ("footer", "a footer")) if f.get(key)]
    parts.append(f"a '{f['button']}' button")
    art = "an" if f["scheme"][0] in "aeiou" else "a"
    return (f"A {f['style']} webpage about {f['topic']} in {art} {f['scheme']} colour scheme, titled '{f['title']}', "
            f"with {', '.join(parts[:-1])} and {parts[-1]}.")


def question_template(q: str) -> str:
    """The template of a generated yes/no question: quoted strings, numbers and the topic word replaced by '…'
    ("Is there a button labelled '…'?"), to measure what the question text alone predicts."""
    q = re.sub(r"'[^']*'", "'…'", q)
    q = re.sub(r"\b\d+\b", "…", q)
    return re.sub(r"about \w+\?", "about …?", q)


def qa_pairs(page: Page, rng: random.Random, n: int = 6, balance: dict | None = None) -> list[tuple[str, str]]:
    """Yes/no questions answered by the page's own structure, balanced: n//2 'Yes' and n//2 'No' (n even).
    balance: a dict shared across a corpus's pages, {template: [no count, yes count]}; each page then asks the
    questions whose answer is the rarer one for their template so far, so that per template (`question_template`)
    the answers are near 50/50 and the question text alone does not predict them."""
    f = page.facts
    cands: list[tuple[str, bool]] = []

    def add(q: str, truth: bool) -> None:
        cands.append((q, bool(truth)))

    for key, what in (("nav", "a navigation bar"), ("table", "a table"), ("form", "a form with input fields"),
                      ("footer", "a footer")):
        add(f"Does the webpage have {what}?", bool(f[key]))
    add(f"Is the main heading of the page '{f['title']}'?", True)
    first, rest = f["title"].split(" ", 1)
    add(f"Is the main heading of the page '{rng.choice([w for w in TITLE_WORDS if w != first])} {rest}'?", False)
    other_topic = rng.choice([t for t in sorted(TOPICS) if t != f["topic"]])
    add(f"Is this webpage about {other_topic}?", False)
    add(f"Is this webpage about {f['topic']}?", True)
    add(f"Is there a button labelled '{f['button']}'?", True)
    other_btn = rng.choice([b for b in ("Sign up", "Learn more", "Contact us", "Buy now") if b != f["button"]])
    add(f"Is there a button labelled '{other_btn}'?", False)
    n_cols = f["columns"]
    add(f"Are there {n_cols} content cards side by side?", True)
    add(f"Are there {n_cols % 3 + 1 if n_cols % 3 + 1 != n_cols else 4} content cards side by side?", False)
    dark = f["scheme"] == "dark"
    add("Does the page have a dark background?", dark)
    for sec in TOPICS[f["topic"]][0]:
        if f["nav"]:
            add(f"Is '{sec}' one of the links in the navigation bar?", sec in f["nav_items"])
    yes = [q for q, t in cands if t]
    no = [q for q, t in cands if not t]
    rng.shuffle(yes)
    rng.shuffle(no)
    k = min(max(1, n // 2), len(yes), len(no))
    if balance is not None:  # the questions whose answer is rarer for their template come first
        def rarer(truth):
            def key(q):
                c = balance.setdefault(question_template(q), [0, 0])
                return c[truth] - c[not truth]
            return key

        yes.sort(key=rarer(True))  # stable: ties keep the shuffled order
        no.sort(key=rarer(False))
        for q, t in [(q, True) for q in yes[:k]] + [(q, False) for q in no[:k]]:
            balance[question_template(q)][t] += 1
    out = [(q, "Yes") for q in yes[:k]] + [(q, "No") for q in no[:k]]
    rng.shuffle(out)
    return out


def template_majority(train_rows, rows) -> dict:
    """The question-text baseline: each row answered with the majority answer of its `question_template` in
    train_rows ('Yes' on ties and unseen templates); {accuracy, per_template {template: [no, yes] in train_rows}}."""
    counts: dict[str, list[int]] = {}
    for r in train_rows:
        counts.setdefault(question_template(r["Q"]), [0, 0])[r["A"].strip().upper() == "YES"] += 1
    right = 0
    for r in rows:
        no, yes = counts.get(question_template(r["Q"]), [0, 0])
        right += ("Yes" if yes >= no else "No").upper() == r["A"].strip().upper()
    return {"accuracy": 100.0 * right / max(1, len(rows)), "per_template": counts}


def build_corpus(out_dir, n: int, *, seed: int = 0, renderer=None, options=None, qa_per_page: int = 6,
                 styles: Sequence[str] = ("modern", "bootstrap")) -> dict:
    """Generate n pages, render them (images/<id>.png), write web2code.json (code generation, LLaVA format; each
    record also carries the page's `caption`, the stage-1 alignment text) and wub.jsonl (balanced yes/no QA). Pages that fail to render are counted and left out of both files, with their
    reasons in the returned summary (never dropped silently)."""
    from jaxlm.web.render import RenderOptions, shared_renderer

    if n <= 0:
        raise DataError(f"n={n}: expected a positive number of pages")
    out_dir = os.fspath(out_dir)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    rng = random.Random(seed)
    r = renderer or shared_renderer()
    o = options or RenderOptions()
    conv, wub, failed, balance = [], [], {}, {}
    for i in range(n):
        page = make_page(rng, f"page{seed}_{i:05d}", styles[i % len(styles)])
        res = r.render(for_rendering(page.html), o)
        if not res.ok:
            failed[page.id] = res.error
            continue
        img = f"images/{page.id}.png"
        with open(os.path.join(out_dir, img), "wb") as fh:
            fh.write(res.png)
        instr = BOOTSTRAP_INSTRUCTION if page.style == "bootstrap" else rng.choice(CODEGEN_INSTRUCTIONS)
        conv.append({"id": page.id, "image": img, "style": page.style, "caption": page_caption(page),
                     "conversations": [{"from": "human", "value": "<image>\n" + instr},
                                       {"from": "gpt", "value": page.html}]})
        for j, (q, a) in enumerate(qa_pairs(page, rng, qa_per_page, balance)):
            wub.append({"image": img, "question_id": f"{page.id}_q{j}", "Q": q, "A": a})
    write_llava_json(os.path.join(out_dir, "web2code.json"), conv)
    write_wub_jsonl(os.path.join(out_dir, "wub.jsonl"), wub)
    summary = {"pages": n, "rendered": len(conv), "failed": failed, "qa": len(wub),
               "yes": sum(r_["A"] == "Yes" for r_ in wub), "no": sum(r_["A"] == "No" for r_ in wub),
               "per_template": template_majority(wub, wub)["per_template"],
               "bootstrap_css": "django-bootstrap-static 5.3.3" if bootstrap_css() else None}
    _atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------- held-out: pydoc pages

DEFAULT_PYDOC_MODULES = ("json", "difflib", "textwrap", "colorsys", "fractions", "statistics", "heapq", "bisect",
                         "shlex", "calendar", "string", "html", "base64", "fnmatch", "glob", "queue")


def pydoc_pages(modules: Sequence[str] = DEFAULT_PYDOC_MODULES) -> list[tuple[str, str]]:
    """(module name, HTML) for standard-library modules, as pydoc.HTMLDoc writes them: real pages no template made.
    Links to other pydoc pages stay (the renderer blocks them)."""
    import importlib
    import pydoc

    doc = pydoc.HTMLDoc()
    out = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            raise DataError(f"pydoc_pages: module {name!r} cannot be imported ({e})") from None
        out.append((name, doc.page(pydoc.describe(mod), doc.document(mod, name))))
    return out
