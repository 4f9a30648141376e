"""Web2Code: rendering HTML in a real browser, the Web2Code data formats and a synthetic page corpus, WUB/WCGB
scoring and the Design2Code automatic metrics. See docs/web2code.md.

    jaxlm.web.render       Renderer, RenderOptions, RenderResult, shared_renderer
    jaxlm.web.data         read/write_llava_json, read/write_wub_jsonl, build_corpus, pydoc_pages, load_image
    jaxlm.web.wub          score_wub, answer_wub
    jaxlm.web.wcgb         judge_wcgb, run_wcgb, aggregate, aggregate_jsonl, parse_scores
    jaxlm.web.design2code  extract_blocks, match_blocks, score_blocks, design2code, mean_scores
    jaxlm.web.color        srgb_to_lab, ciede2000
"""
