"""Command line for jaxlm.web:

    python -m jaxlm.web render PAGE.html -o PAGE.png [--viewport] [--wcgb-original] [--width W --height H]
    python -m jaxlm.web design2code PRED.html REF.html      # the four components as JSON (no CLIP: no final)
    python -m jaxlm.web corpus OUT_DIR N [--seed S]          # template pages + web2code.json + wub.jsonl
    python -m jaxlm.web pydoc OUT_DIR [MODULE ...]           # the held-out pydoc pages, HTML + PNG
    python -m jaxlm.web wub RESULTS.jsonl                    # accuracy of {pred, actual} rows, as the original
    python -m jaxlm.web wcgb JUDGE_OUTPUT.jsonl              # VSA/CAD/TCC/UII/Overall of {image_id, output} rows

Every command prints one JSON object; a page that fails to render is reported, with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jaxlm.errors import JaxlmError


def _options(a):
    from jaxlm.web.render import RenderOptions

    if a.wcgb_original:
        return RenderOptions.wcgb_original()
    return RenderOptions(width=a.width, height=a.height, full_page=not a.viewport, timeout_s=a.timeout)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise JaxlmError(f"{path}: cannot read ({e.strerror})") from None


def main(argv=None, renderer=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxlm.web", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("render", "design2code", "corpus", "pydoc"):
        s = sub.add_parser(name)
        s.add_argument("--width", type=int, default=1280)
        s.add_argument("--height", type=int, default=720)
        s.add_argument("--viewport", action="store_true", help="viewport only (default: full page)")
        s.add_argument("--wcgb-original", action="store_true", help="the original WCGB renderer's settings")
        s.add_argument("--timeout", type=float, default=10.0)
        if name == "render":
            s.add_argument("html")
            s.add_argument("-o", "--out", required=True)
        elif name == "design2code":
            s.add_argument("pred")
            s.add_argument("ref")
        elif name == "corpus":
            s.add_argument("out")
            s.add_argument("n", type=int)
            s.add_argument("--seed", type=int, default=0)
        else:
            s.add_argument("out")
            s.add_argument("modules", nargs="*")
    sub.add_parser("wub").add_argument("results")
    sub.add_parser("wcgb").add_argument("judge_output")
    a = p.parse_args(argv)
    try:
        out, status = _run(a, renderer)
    except JaxlmError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(out, indent=1, default=str))
    return status


def _run(a, renderer):
    if a.cmd == "wub":
        from jaxlm.web.wub import score_wub_jsonl

        return score_wub_jsonl(a.results).as_dict(), 0
    if a.cmd == "wcgb":
        from jaxlm.web.wcgb import aggregate_jsonl

        rep = aggregate_jsonl(a.judge_output)
        return {**rep.as_dict(), "parse_failure_ids": rep.parse_failures}, 0
    from jaxlm.web.render import Renderer

    own = renderer is None
    r = renderer or Renderer()
    try:
        o = _options(a)
        if a.cmd == "render":
            res = r.render(_read(a.html), o)
            if res.ok:
                with open(a.out, "wb") as f:
                    f.write(res.png)
            return {k: getattr(res, k) for k in ("ok", "error", "width", "height", "page_height", "clipped",
                                                 "truncated", "decode_errors", "blocked_requests", "seconds")}, \
                0 if res.ok else 1
        if a.cmd == "design2code":
            from jaxlm.web.design2code import design2code

            return design2code(r, _read(a.pred), _read(a.ref), o).as_dict(), 0
        if a.cmd == "corpus":
            from jaxlm.web.data import build_corpus

            s = build_corpus(a.out, a.n, seed=a.seed, renderer=r, options=o)
            return s, 0 if not s["failed"] else 1
        from jaxlm.web.data import DEFAULT_PYDOC_MODULES, pydoc_pages

        os.makedirs(a.out, exist_ok=True)
        failed = {}
        pages = pydoc_pages(tuple(a.modules) or DEFAULT_PYDOC_MODULES)
        for name, html in pages:
            with open(os.path.join(a.out, f"{name}.html"), "w", encoding="utf-8") as f:
                f.write(html)
            res = r.render(html, o)
            if res.ok:
                with open(os.path.join(a.out, f"{name}.png"), "wb") as f:
                    f.write(res.png)
            else:
                failed[name] = res.error
        return {"pages": len(pages), "rendered": len(pages) - len(failed), "failed": failed}, 0 if not failed else 1
    finally:
        if own:
            r.close()


if __name__ == "__main__":
    sys.exit(main())
