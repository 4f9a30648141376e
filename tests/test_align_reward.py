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
    ('Here: {"a": {"b": "trunc', "repaired"),
    ('{a: 1}', "repaired"),
    ("no json at all", "failed"),
    ("", "failed"),
])
def test_parse_json_repairs(text, status):
    obj, st = parse_json(text)
    assert st == status
    if status != "failed":
        assert "a" in obj


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
    assert CAT.rubrics["empathy"] not in prompt and '"Clarity": {"rationale"' in prompt and "because" in prompt


def test_shipped_prompts_and_data_are_versioned():
    v = template_versions()
    for name in ("aspect_selector", "scorer", "critic", "rewriter", "optimizer", "eval_multi", "eval_safety",
                 "aspects", "icl_seed", "train_queries", "eval_queries"):
        assert v[name] >= 1, name
    with pytest.raises(KeyError, match="needs variable"):
        load_template("scorer").render(response="x")
    assert len(seed_examples()) == 16
    reg, harm = eval_queries()
    assert len(reg) >= 10 and len(harm) >= 5
    train = set(q for pool in load_data("train_queries")["pools"].values() for q in pool)
    assert not train & set(reg + harm) and not train & {e.query for e in seed_examples()}


def test_training_sampler_is_seeded_and_mixed():
    a, b = sample_training_queries(12, seed=1), sample_training_queries(12, seed=1)
    assert a == b and len(set(a)) == 12 and a != sample_training_queries(12, seed=2)
    pools = load_data("train_queries")["pools"]
    harmful = [q for q in a if q in pools["harmful"]]
    assert len(harmful) == 3  # 25% of 12
    # interleaved: the first three come from different pools
    assert len({next(k for k, v in pools.items() if q in v) for q in a[:3]}) == 3


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
    assert judge.calls == 2 and stats["json_repaired"] == 2  # the stop strings cut the closing brackets
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
    assert parse_new_prompt('{"new_system_prompt": "the full new system prompt', stats) is None
    assert parse_rewrite('{"new_response": "..."}', stats) is None
    assert stats["placeholder_copied"] == 3 and stats["rewrite_failed"] == 2 and stats["action_failed"] == 1
    assert parse_rewrite('{"new_response": "Paris is the capital."}', stats) == "Paris is the capital."
    assert parse_new_prompt('new_system_prompt: You are careful and kind.', stats) == "You are careful and kind."
