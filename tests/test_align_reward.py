"""Dynamic rewarding: lenient JSON parsing, unknown aspects, malformed judgements (retried, repaired or skipped and
counted, never raised), the per-query aspect cache; plus the shipped prompt/data files."""

import json
from collections import Counter

import pytest

from jaxlm.align.llm import ScriptedLLM
from jaxlm.align.prompts import (base_prompt, eval_queries, load_data, load_template, sample_training_queries,
                                 seed_examples, template_versions)
from jaxlm.align.reward import (AspectCache, Catalogue, JudgeConfig, dynamic_reward, parse_json, parse_scores,
                                parse_selection, score_responses, select_aspects)
from jaxlm.align.state import AspectSelection, Example

CAT = Catalogue.load()


@pytest.mark.parametrize("text,status", [
    ('{"a": 1}', "ok"),
    ('Sure! ```json\n{"a": 1}\n``` hope that helps', "repaired"),
    ('{"a": 1,}', "repaired"),
    ("{'a': 1}", "repaired"),
    ('Here: {"a": {"b": "trunc', "truncated"),  # cut by the token limit: refused, never closed up
    ('```json\n{"a": {"b": 1}, "c": [1, 2', "truncated"),
    ('{a: 1}', "repaired"),
    ("no json at all", "failed"),
    ("", "failed"),
])
def test_parse_json_repairs(text, status):
    obj, st = parse_json(text)
    assert st == status
    if status in ("ok", "repaired"):
        assert "a" in obj
    else:
        assert obj is None


def test_catalogue_and_aliases():
    assert len(CAT.rubrics) == 14
    assert CAT.canonical("Critical-Thinking") == "critical thinking"
    assert CAT.canonical("Compliance with Instructions") == "compliance"
    assert CAT.canonical("**Cultural Sensitivity**") == "sensitivity"
    assert CAT.canonical("Vibes") is None and CAT.canonical(3) is None


def test_parse_selection_unknown_and_bounds():
    stats = Counter()
    text = json.dumps({"aspects_selection": {"reasoning": "why", "selected_aspects": [
        "Helpfulness", "Vibes", "clarity", "Clarity", "Acknowledgement of Limitations", "Depth", "Empathy", "Safety"]}})
    sel = parse_selection(text, CAT, 2, 5, stats)
    assert sel.aspects == ("helpfulness", "clarity", "limitations", "depth", "empathy") and sel.reasoning == "why"
    assert stats["unknown_aspect"] == 1 and stats["too_many_aspects"] == 1
    assert parse_selection('{"selected_aspects": ["Vibes", "Helpfulness"]}', CAT, 2, 5, stats) is None
    assert stats["too_few_aspects"] == 1
    # prose instead of JSON: aspect names recovered in order of mention
    sel = parse_selection("I think Safety and then Empathy matter most.", CAT, 2, 5, stats)
    assert sel.aspects == ("safety", "empathy") and stats["regex_repaired"] == 1
    assert parse_selection("garbage", CAT, 2, 5, stats) is None and stats["json_failed"] == 1


def test_parse_scores_variants():
    stats = Counter()
    aspects = ("helpfulness", "clarity", "depth")
    text = ('```json\n{"Helpfulness": {"rationale": "ok", "score": "4/5"}, "Clarity": {"rationale": "x", "score": 9},'
            ' "Creativity": {"score": 2}, "Mood": {"score": 1},}\n```')
    ev = parse_scores(text, aspects, CAT, stats)
    assert [(s.aspect, s.score) for s in ev.scores] == [("helpfulness", 4), ("clarity", 5)]
    assert ev.scores[0].rationale == "ok" and ev.reward == 4.5
    assert stats["bad_score"] == 1 and stats["unexpected_aspect"] == 1 and stats["unknown_aspect"] == 1
    assert stats["missing_aspect"] == 1 and stats["json_repaired"] == 1
    # N/A: dropped in rewards, 5 in evaluation (just-eval convention)
    na = '{"Helpfulness": {"score": "N/A"}, "Clarity": {"score": 2}}'
    assert parse_scores(na, aspects, CAT, stats).reward == 2.0 and stats["not_applicable"] == 1
    assert parse_scores(na, aspects, CAT, Counter(), na_score=5).reward == 3.5
    # prose with numbers near the aspect names
    ev = parse_scores("Helpfulness: 3/5 because... Depth score 2.", aspects, CAT, stats)
    assert [(s.aspect, s.score) for s in ev.scores] == [("helpfulness", 3), ("depth", 2)]
    assert parse_scores("I refuse to grade this.", aspects, CAT, stats) is None
    halves = parse_scores('{"Helpfulness": {"score": 2.5}, "Clarity": {"score": 1.5}}', aspects, CAT, Counter())
    assert [s.score for s in halves.scores] == [3, 2]


def _judge(bad_first: bool):
    def respond(text, seed, temp):
        if bad_first and seed == 0:
            return "Let me think about it {{{"
        if "selected_aspects" in text:
            return json.dumps({"aspects_selection": {"reasoning": "r", "selected_aspects": ["Clarity", "Depth"]}})
        return json.dumps({"Clarity": {"rationale": "c", "score": 4}, "Depth": {"rationale": "d", "score": 2}})
    return ScriptedLLM(respond)


def test_retry_then_success_and_cache(tmp_path):
    judge, stats = _judge(bad_first=True), Counter()
    cache = AspectCache(tmp_path / "aspects.json")
    evs = dynamic_reward(judge, [("q1", "r1"), ("q2", "r2"), ("q1", "r3")], cat=CAT, cache=cache, stats=stats)
    assert [e.reward for e in evs] == [3.0, 3.0, 3.0]
    assert stats["selection_retry"] == 2 and stats["score_retry"] == 3
    # retries sample with another seed at the retry temperature
    assert {s for _, s in judge.log} == {0, 1}
    # cached per query, persisted, reloaded by a new cache object
    n = judge.calls
    again = AspectCache(tmp_path / "aspects.json")
    assert again.get("q1") == AspectSelection(("clarity", "depth"), "r")
    select_aspects(judge, ["q1", "q2"], cat=CAT, cache=again, stats=stats)
    assert judge.calls == n and stats["selection_cache_hit"] == 2
    # a selection under another aspect-count range (stage 1: 3-6) is not served from the 2-5 entry
    select_aspects(judge, ["q1"], cat=CAT, cache=again, stats=stats, cfg=JudgeConfig(min_aspects=3, max_aspects=6))
    assert judge.calls > n and stats["selection_cache_hit"] == 2


def test_hopeless_judge_never_crashes():
    judge, stats = ScriptedLLM(default="}}}{{{ nope"), Counter()
    evs = dynamic_reward(judge, [("q", "r")], cat=CAT, stats=stats, cfg=JudgeConfig(retries=2))
    assert evs[0].scores == () and evs[0].reward == 0.0 and not evs[0].ok
    assert stats["selection_fallback"] == 1 and stats["score_failed"] == 1
    assert judge.calls == 6  # 3 selection attempts + 3 scoring attempts, bounded
    sel = select_aspects(judge, ["q"], cat=CAT, cfg=JudgeConfig(retries=0))[0]
    assert sel.fallback and sel.aspects == CAT.default


def test_scorer_prompt_contains_only_selected_rubrics():
    judge = _judge(bad_first=False)
    score_responses(judge, [("q", "resp", AspectSelection(("clarity", "depth"), "because"))], cat=CAT)
    prompt = judge.log[0][0]
    assert CAT.rubrics["clarity"] in prompt and CAT.rubrics["depth"] in prompt
    assert CAT.rubrics["empathy"] not in prompt and "because" in prompt
    tpl = json.loads(prompt.split("```\n", 1)[1].split("\n```", 1)[0])  # the original's placeholder template
    assert tpl == {"Clarity": {"rationale": "[your reasoning about the clarity of the answer]",
                               "score": "[your clarity score]"},
                   "Depth": {"rationale": "[your reasoning about the depth of the answer]", "score": "[your depth score]"}}
    # an impartial judge on the 1-5 agreement scale (the original's eval prompt)
    assert prompt.startswith("Act as an impartial judge")
    for label in ("1: strongly disagree", "2: disagree", "3: neutral", "4: agree", "5: strongly agree"):
        assert label in prompt


def test_rubrics_are_anchored_and_selection_descriptions_separate():
    import re

    assert set(CAT.descriptions) == set(CAT.rubrics) and len(CAT.rubrics) == 14
    for a, rubric in CAT.rubrics.items():  # every scoring rubric says what a 5 and what a 1 mean
        assert re.search(r"\bA 5 means\b", rubric) and re.search(r"\ba 1 means\b", rubric), a
        assert CAT.descriptions[a] != rubric and "5" not in CAT.descriptions[a], a
    listing = CAT.listing()  # the selector reads the short descriptions, not the rubrics
    assert all(d in listing for d in CAT.descriptions.values())
    assert not any(r in listing for r in CAT.rubrics.values())
    sel = load_template("aspect_selector").render(query="q", aspect_list=listing, min_aspects=2, max_aspects=5)
    assert sel.startswith("Act as an impartial judge") and "at least 2 and at most 5" in sel
    for k in ("main_topic", "user_intent", "ambiguities", "response_format", "challenges", "selected_aspects"):
        assert f'"{k}"' in sel
    assert len(re.findall(r"^\d\. ", sel, re.M)) == 5  # the five analysis questions


def test_meta_prompts_carry_the_originals_rules():
    import re

    opt = load_template("optimizer").text
    general, structure = opt.split("general guidelines:", 1)[1].split("Give the new system prompt this structure:")
    assert "must be better than the current one" in general and "evenly across all the aspects" in general
    assert "MUST be GENERAL" in general and len(re.findall(r"^\d+\. ", general, re.M)) == 5
    rules = re.findall(r"^\d+\. ", structure, re.M)
    assert len(rules) == 11  # the original's 11 structure rules
    assert "may be detailed and long" in structure and "more than 2 bullet points" in structure
    assert "exceed 8 bullet points" in structure and "merge" in structure
    assert all(f'"{k}"' in opt for k in ("analysis", "thought", "new_system_prompt"))
    critic = load_template("critic").text
    assert critic.startswith("You are a ruthless critic") and "ALWAYS say why" in critic
    assert "lacks structure" in critic and "conciseness you may be a little lenient" in critic
    rew = load_template("rewriter").text
    guide = rew.split("following these guidelines:", 1)[1].split("The two answers below", 1)[0]
    assert len(re.findall(r"^\d+\. ", guide, re.M)) == 16  # the original's 16 guidelines
    assert "AT MOST 6 BULLET POINTS" in guide and "As an AI model I can't" in guide and "<START>" in guide
    examples = rew.split("# Query:")[1:]
    assert len(examples) == 2 and all("<START>" in e and "<END>" in e for e in examples)
    assert all(len(re.findall(r"\[[A-Z][^\]]+\]", e)) >= 5 for e in examples)  # annotated in square brackets
    assert all(f'"{k}"' in rew for k in ("analysis", "thought", "new_response"))


def test_evaluation_judges_use_just_evals_scales_without_na():
    multi, safety = load_template("eval_multi").text, load_template("eval_safety").text
    for t in (multi, safety):
        assert "N/A" not in t and "impartial judge" in t
    for label in ("1: strongly disagree", "2: disagree", "3: neutral", "4: agree", "5: strongly agree"):
        assert label in multi
    for a in ("helpfulness", "clarity", "factuality", "depth", "engagement"):
        assert f'"{a}": {{\n        "reason"' in multi and CAT.display(a) in multi
    for label in ("1: Highly unsafe", "2: Moderately unsafe", "3: Neutral", "4: Mostly safe", "5: Completely safe"):
        assert label in safety


def test_truncated_judgements_are_refused_and_retried():
    from jaxlm.align.icl import parse_rewrite
    from jaxlm.align.llm import ask

    stats = Counter()
    cut = '{"Clarity": {"rationale": "fine", "score": 4}, "Depth": {"rationale": "the answer goes on'
    assert parse_scores(cut, ("clarity", "depth"), CAT, stats) is None and stats["json_truncated"] == 1
    assert parse_selection('{"aspects_selection": {"selected_aspects": ["Clarity", "Dep', CAT, 2, 5, stats) is None
    assert parse_rewrite('{"analysis": "a", "new_response": "Step one, then step', stats) is None
    assert stats["json_truncated"] == 3 and stats["regex_repaired"] == 0  # no recovery from the cut text either
    # a judge whose first answer is cut off: retried, the complete answer is used
    answers = iter([cut, '{"Clarity": {"score": 4}, "Depth": {"score": 2}}'])
    judge = ScriptedLLM(lambda t, s, x: next(answers))
    sel = AspectSelection(("clarity", "depth"), "r")
    (ev,) = score_responses(judge, [("q", "r", sel)], cat=CAT, stats=stats)
    assert ev.reward == 3.0 and stats["score_retry"] == 1 and judge.calls == 2
    # prefilled answers: closed only when the stop string ended them, not when they hit the token limit
    llm = PrefillScripted(lambda t, s, x: "x" * 200 + '"}')
    assert ask(llm, ["p"], ['{"new_response": "'], prefill=True, prefill_stop=['"}'], prefill_close='"}',
               max_tokens=50)[0].text == '{"new_response": "' + "x" * 200  # 50 tokens: the limit, left open
    assert ask(llm, ["p"], ['{"new_response": "'], prefill=True, prefill_stop=['"}'], prefill_close='"}',
               max_tokens=2048)[0].text == '{"new_response": "' + "x" * 200 + '"}'


def test_shipped_prompts_and_data_are_versioned():
    v = template_versions()
    for name in ("aspect_selector", "icl_aspect_selector", "scorer", "critic", "rewriter", "optimizer", "eval_multi",
                 "eval_safety", "aspects", "icl_seed", "train_queries", "eval_queries"):
        assert v[name] >= 1, name
    with pytest.raises(KeyError, match="needs variable"):
        load_template("scorer").render(response="x")
    assert len(seed_examples()) == 16
    reg, harm = eval_queries()
    assert len(reg) >= 10 and len(harm) >= 5
    train = set(q for pool in load_data("train_queries")["pools"].values() for q in pool)
    assert not train & set(reg + harm) and not train & {e.query for e in seed_examples()}


def test_training_queries_follow_the_original_mixture():
    import numpy as np

    from jaxlm.align.prompts import interleave_pools, load_query_pools, pool_counts, training_queries

    pools = load_query_pools()
    # the original's pools: 86 Alpaca instructions, 52 LIMA queries, 42 malicious requests (180)
    assert {k: len(v) for k, v in pools.items()} == {"alpaca": 86, "lima": 52, "malicious": 42}
    assert pool_counts(180, {k: len(v) for k, v in pools.items()}) == {"alpaca": 86, "lima": 52, "malicious": 42}
    # floor of the proportional share, the remainder topped up alpaca, lima, malicious in turn
    assert pool_counts(30, {"alpaca": 86, "lima": 52, "malicious": 42}) == {"alpaca": 15, "lima": 8, "malicious": 7}
    assert pool_counts(10, {"alpaca": 86, "lima": 52, "malicious": 42}) == {"alpaca": 5, "lima": 3, "malicious": 2}
    # interleaving in chunks of max(1, int(10 * share)): 2 LIMA, 2 malicious, 4 Alpaca, repeated
    kinds = {q: k for k, v in pools.items() for q in v}
    inter = interleave_pools(pools)
    assert [kinds[q][0] for q in inter[:16]] == list("llmmaaaa" * 2)
    assert sorted(inter) == sorted(q for v in pools.values() for q in v)
    # then numpy's legacy shuffle with seed 42 (np.random.seed(42); np.random.shuffle(examples))
    q = training_queries(180, sample_seed=3)
    order = list(range(180))
    np.random.seed(42)
    np.random.shuffle(order)
    assert len(q) == 180 and len(set(q)) == 180
    # the seed-42 permutation fixes the kind at every position whatever the sample: not a fixed rotation
    for seed in (0, 1, 2):
        got = [kinds[x] for x in training_queries(180, sample_seed=seed)]
        assert got == [kinds[inter[i]] for i in order]
    assert training_queries(30, sample_seed=1) == training_queries(30, sample_seed=1)
    assert training_queries(30, sample_seed=1) != training_queries(30, sample_seed=2)
    assert [kinds[x] for x in training_queries(30)].count("malicious") == 7


def test_user_query_files_in_the_original_format(tmp_path):
    from jaxlm.align.prompts import load_query_pools, training_queries
    from jaxlm.errors import DataFileNotFoundError

    (tmp_path / "alpaca_train.json").write_text(json.dumps([{"instruction": f"do task {i}"} for i in range(6)]))
    (tmp_path / "lima_subsample_train.json").write_text(json.dumps([{"query": f"ask {i}", "category": "x"}
                                                                    for i in range(3)]))
    (tmp_path / "mal_train.txt").write_text("bad one\nbad two\n\nbad three")
    pools = load_query_pools(tmp_path)
    assert pools["malicious"] == ["bad one", "bad two", "bad three"] and pools["lima"][0] == "ask 0"
    q = training_queries(12, source=tmp_path)
    assert sorted(q) == sorted(sum(pools.values(), []))
    (tmp_path / "mal_train.txt").unlink()
    with pytest.raises(DataFileNotFoundError, match="mal_train.txt"):
        load_query_pools(tmp_path)


def test_base_prompt_formats():
    raw = base_prompt("Be nice.", [Example("Q1?", "A1.")], "Q2?", "raw")
    assert raw == ("# Instructions\nBe nice.\n\n# Query:\nQ1?\n\n# Answer:\n<START>A1.<END>\n\n"
                   "# Query:\nQ2?\n\n# Answer:\n<START>")
    chat = base_prompt("Be nice.", [Example("Q1?", "A1.")], "Q2?", "chat")
    assert chat[0]["role"] == "system" and "A1." in chat[0]["content"] and chat[1] == {"role": "user", "content": "Q2?"}
    with pytest.raises(ValueError, match="format"):
        base_prompt("x", [], "q", "html")


class PrefillScripted(ScriptedLLM):
    supports_prefill = True


def test_prefilled_judge_answers_are_completed_and_parsed():
    def respond(text, seed, temp):
        assert text.splitlines()[-1].startswith("assistant: {")  # the answer was started for the model
        if "selected_aspects" in text.splitlines()[-1]:
            return 'Clarity", "Depth"]}} and some rambling'
        return '4, "rationale": "ok"}, "Depth": {"score": 2}}\nmore rambling'
    judge, stats = PrefillScripted(respond), Counter()
    cfg = JudgeConfig(prefill=True, selection_max_tokens=16)
    evs = dynamic_reward(judge, [("q", "r")], cat=CAT, stats=stats, cfg=cfg)
    assert [(s.aspect, s.score) for s in evs[0].scores] == [("clarity", 4), ("depth", 2)]
    # the stop strings cut the closing brackets; ask() puts them back on answers that stopped there
    assert judge.calls == 2 and stats["json_repaired"] == 0 and stats["json_truncated"] == 0
    # without prefill support the same config sends plain prompts
    plain = ScriptedLLM(lambda t, s, x: json.dumps({"selected_aspects": ["Clarity", "Depth"]}) if "selected_aspects"
                        in t else '{"Clarity": {"score": 5}, "Depth": {"score": 5}}')
    assert dynamic_reward(plain, [("q", "r")], cat=CAT, cfg=cfg)[0].reward == 5.0
    assert "assistant:" not in plain.log[0][0]


def test_copied_placeholders_are_rejected():
    from jaxlm.align.icl import parse_rewrite
    from jaxlm.align.search import parse_new_prompt

    stats = Counter()
    assert parse_rewrite('{"new_response": "The full improved answer."}', stats) is None
    assert parse_new_prompt('{"new_system_prompt": "[the complete new system prompt]"}', stats) is None
    assert parse_rewrite('{"new_response": "..."}', stats) is None
    assert stats["placeholder_copied"] == 3 and stats["rewrite_failed"] == 2 and stats["action_failed"] == 1
    assert parse_rewrite('{"new_response": "Paris is the capital."}', stats) == "Paris is the capital."
    assert parse_new_prompt('new_system_prompt: You are careful and kind.', stats) == "You are careful and kind."
