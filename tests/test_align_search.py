"""DRPO stage 2 (beam search) and stage 1 (ICL optimization) driven by deterministic scripted LLMs, so every beam,
skip, ranking and keep/reject decision can be asserted exactly; checkpoint/resume repeats no completed call."""

import json
import re

import pytest

from jaxlm.align.icl import ICLConfig, optimize_examples
from jaxlm.align.llm import Cached, ResponseCache, ScriptedLLM
from jaxlm.align.reward import AspectCache, Catalogue
from jaxlm.align.search import (Context, Roles, SearchConfig, beam_step, best_node, export_trace, init_search,
                                load_checkpoint, run_search, should_skip)
from jaxlm.align.state import AspectScore, Evaluation, Example, from_json, to_json
from jaxlm.errors import CheckpointError

QUERIES = [f"question number {i}?" for i in range(6)]
ROOT = "You are a helpful assistant."

# reward of (prompt, query index); the prompts are named by the scripted optimizer: parent + "." + seed
TABLE = {
    ("R", 0): 3,
    ("R.0", 1): 2, ("R.1", 1): 4, ("R.2", 1): 3,
    ("R.1.0", 2): 1, ("R.1.1", 2): 2, ("R.1.2", 2): 3, ("R.2.0", 2): 5, ("R.2.1", 2): 4, ("R.2.2", 2): 1,
    ("R.2.0", 3): 3, ("R.1.2.0", 3): 5, ("R.1.2.1", 3): 2, ("R.1.2.2", 3): 4,
    ("R.1.2.0", 4): 4, ("R.2.0.0", 4): 5,
}


def short(prompt: str) -> str:
    return "R" + prompt[len(ROOT):] if prompt.startswith(ROOT) else prompt


def base_fn(text, seed, temp):
    sp = text.split("# Instructions\n", 1)[1].split("\n\n# Query:", 1)[0]
    return f"answer under <<{sp}>>"


def judge_fn(text, seed, temp):
    if "selected_aspects" in text:  # aspect selector
        return json.dumps({"aspects_selection": {"reasoning": "r", "selected_aspects": ["Helpfulness", "Clarity"]}})
    q = int(re.search(r"question number (\d+)\?", text).group(1))
    sp = re.search(r"answer under <<(.*?)>>", text, re.S).group(1)
    s = TABLE.get((short(sp), q), 1)
    return json.dumps({"Helpfulness": {"rationale": "h", "score": s}, "Clarity": {"rationale": "c", "score": s}})


def optimizer_fn(text, seed, temp):
    cur = text.split('Current system prompt:\n"""', 1)[1].split('"""', 1)[0]
    return json.dumps({"analysis": "a", "thought": "t", "new_system_prompt": f"{cur}.{seed}"})


def make_roles(fail_after=None):
    return Roles(base=ScriptedLLM(base_fn, name="base", fail_after=fail_after),
                 judge=ScriptedLLM(judge_fn, name="judge"), optimizer=ScriptedLLM(optimizer_fn, name="opt"))


CFG = SearchConfig(beam_width=2, n_actions=3, depth=4, max_depth_increase=1)  # paths of 4 states: 3 levels


def beam_names(state):
    return [short(n.prompt) for n in state.beam]


def test_beam_search_exact_trajectory():
    roles, ctx = make_roles(), Context()
    st = init_search(roles, QUERIES, ctx, CFG)
    assert st.level == 0 and st.depth == 4 and beam_names(st) == ["R"] and st.beam[0].results[0].reward == 3
    st = beam_step(st, roles, QUERIES, ctx, CFG)
    assert beam_names(st) == ["R.1", "R.2"]  # rewards 4, 3 beat 2; width 2
    st = beam_step(st, roles, QUERIES, ctx, CFG)
    # path means: R.2.0 (3+5)/2=4.0; R.1.2 and R.2.1 tie at 3.5 -> generation order keeps R.1.2
    assert beam_names(st) == ["R.2.0", "R.1.2"]
    assert [n.mean_reward for n in st.beam] == [4.0, 3.5]
    assert st.depth == 4 and not st.finished
    n_opt = roles.optimizer.calls
    st = beam_step(st, roles, QUERIES, ctx, CFG)
    # R.2.0 scored all 5s -> skipped (kept as is, not sent to the optimizer); depth grows by one
    assert roles.optimizer.calls - n_opt == 3
    assert st.depth == 5 and st.depth_increases == 1 and st.skips == 1 and not st.finished
    assert beam_names(st) == ["R.1.2.0", "R.2.0"]  # 4.0; then R.2.0 (11/3) ties R.1.2.2 (11/3): earlier parent
    assert st.beam[1].results[-1].query == QUERIES[3] and st.beam[1].results[-2].query == QUERIES[2]
    st = beam_step(st, roles, QUERIES, ctx, CFG)
    # R.1.2.0 skipped again, but the depth budget (1) is spent: the paths hold 5 states, the search ends
    assert st.finished and st.level == 4 and st.depth == 5 and st.skips == 2
    assert beam_names(st) == ["R.1.2.0", "R.2.0.0"]  # both 4.0: the kept node came first
    best = best_node(st)
    assert short(best.prompt) == "R.1.2.0" and best.rewards == (4.0, 3.0, 5.0, 4.0)
    assert best.prompt == ROOT + ".1.2.0"
    assert [r.query for r in best.results] == QUERIES[:5]
    trace = export_trace(best)
    assert list(trace) == [f"level {i}" for i in range(5)]
    assert trace["level 2"]["Evaluation of the prompt"]["helpfulness"]["score"] == 3
    # the aspect selection happened once per query (cached per query)
    assert len(ctx.aspect_cache) == 5
    assert sum("selected_aspects" in t for t, _ in roles.judge.log) == 5
    assert evaluate_again_uses_cache(roles, ctx)
    # stepping a finished state is the identity
    assert beam_step(st, roles, QUERIES, ctx, CFG) is st


def evaluate_again_uses_cache(roles, ctx):
    from jaxlm.align.search import evaluate_prompts
    before = sum("selected_aspects" in t for t, _ in roles.judge.log)
    evaluate_prompts(roles, [("another prompt", QUERIES[1])], ctx, CFG)
    after = sum("selected_aspects" in t for t, _ in roles.judge.log)
    return after == before and ctx.stats["selection_cache_hit"] == 1


def test_optimizer_sees_history_and_evaluation():
    roles, ctx = make_roles(), Context()
    st = init_search(roles, QUERIES, ctx, CFG)
    st = beam_step(st, roles, QUERIES, ctx, CFG)
    st = beam_step(st, roles, QUERIES, ctx, CFG)
    prompts = [t for t, _ in roles.optimizer.log]
    lvl2 = [p for p in prompts if f'Current system prompt:\n"""{ROOT}.1"""' in p]
    assert len(lvl2) == 3  # n_actions samples of one prompt, with distinct seeds
    assert sorted(s for _, s in roles.optimizer.log if f'"""{ROOT}.1"""' in _) == [0, 1, 2]
    # the original's history: the path's last prompts, the current one under '---Current Version---'
    assert f"---Version 1---\n{ROOT}\n---Current Version---\n{ROOT}.1" in lvl2[0]
    assert "---Version 2---" not in lvl2[0]
    # the evaluation as the judge's JSON (indented), as the original passes it
    assert '"Helpfulness": {\n        "rationale": "h",\n        "score": 4\n    }' in lvl2[0]
    assert QUERIES[1] in lvl2[0]


def test_skip_rule_thresholds():
    cfg = SearchConfig(skip_threshold=4.5)
    ev = lambda *s: Evaluation(tuple(AspectScore("helpfulness", x) for x in s))  # noqa: E731
    assert should_skip(Evaluation(()), cfg)  # unparseable judgement
    assert should_skip(ev(5, 5), cfg)
    assert should_skip(ev(5, 5, 4), cfg)  # 4.67 > 4.5
    assert not should_skip(ev(5, 4), cfg)  # exactly 4.5 is not above
    assert not should_skip(ev(3, 3), cfg)
    assert not should_skip(ev(5, 5), SearchConfig(skip=False))


def test_unusable_optimizer_answers_keep_the_prompt():
    roles = make_roles()
    roles = Roles(roles.base, roles.judge, ScriptedLLM(lambda t, s, x: "no json here", name="bad"))
    ctx = Context()
    cfg = SearchConfig(beam_width=2, n_actions=2, depth=2)
    st = beam_step(init_search(roles, QUERIES, ctx, cfg), roles, QUERIES, ctx, cfg)
    assert beam_names(st) == ["R"] and ctx.stats["action_failed"] == 2 and ctx.stats["all_actions_failed"] == 1


def test_state_json_round_trip():
    roles, ctx = make_roles(), Context()
    st = beam_step(init_search(roles, QUERIES, ctx, CFG), roles, QUERIES, ctx, CFG)
    again = from_json(json.loads(json.dumps(to_json(st))))
    assert again == st and hash(again) == hash(st)


def _cached_roles(cache, fail_after=None):
    r = make_roles(fail_after)
    return r, Roles(Cached(r.base, cache), Cached(r.judge, cache), Cached(r.optimizer, cache))


def test_resume_after_kill_repeats_no_call(tmp_path):
    # reference: an uninterrupted run
    ref_raw, ref = _cached_roles(ResponseCache(tmp_path / "ref.sqlite"))
    ref_state = run_search(ref, QUERIES, Context(), CFG, checkpoint=str(tmp_path / "ref.json"))
    ref_calls = sum(x.calls for x in (ref_raw.base, ref_raw.judge, ref_raw.optimizer))

    ck, cache_path = str(tmp_path / "run" / "search.json"), tmp_path / "run" / "cache.sqlite"
    aspects = str(tmp_path / "run" / "aspects.json")
    # the base model "dies" in the middle of level 3's batch of 4 generations (after 1+3+6+2 = 12 prompts)
    raw1, roles1 = _cached_roles(ResponseCache(cache_path), fail_after=12)
    with pytest.raises(KeyboardInterrupt):
        run_search(roles1, QUERIES, Context(aspect_cache=AspectCache(aspects)), CFG, checkpoint=ck)
    done = sum(x.calls for x in (raw1.base, raw1.judge, raw1.optimizer))
    state_at_kill, _ = load_checkpoint(ck, QUERIES, CFG)
    assert state_at_kill.level == 2  # levels 0..2 were checkpointed

    raw2, roles2 = _cached_roles(ResponseCache(cache_path))
    state = run_search(roles2, QUERIES, Context(aspect_cache=AspectCache(aspects)), CFG, checkpoint=ck)
    resumed = sum(x.calls for x in (raw2.base, raw2.judge, raw2.optimizer))
    assert state == ref_state
    assert done + resumed == ref_calls  # every completed call was served by the checkpoint or the cache
    # the 2 base answers given before the kill are not asked again
    asked_before = {t for t, _ in raw1.base.log}
    assert not asked_before & {t for t, _ in raw2.base.log}

    # resuming a finished run issues no call at all
    raw3, roles3 = _cached_roles(ResponseCache(cache_path))
    assert run_search(roles3, QUERIES, Context(aspect_cache=AspectCache(aspects)), CFG, checkpoint=ck) == ref_state
    assert raw3.base.calls == raw3.judge.calls == raw3.optimizer.calls == 0

    with pytest.raises(CheckpointError, match="config"):
        load_checkpoint(ck, QUERIES, SearchConfig(beam_width=3))
    with pytest.raises(CheckpointError, match="queries"):
        load_checkpoint(ck, QUERIES[::-1], CFG)


def _depth_run(depth, max_inc, perfect):
    """A beam-1, 1-action search whose judge always gives `perfect` scores (5s: every level skips)."""
    score = 5 if perfect else 3
    judge = ScriptedLLM(lambda t, s, x: json.dumps(
        {"aspects_selection": {"selected_aspects": ["Helpfulness", "Clarity"]}}) if "selected_aspects" in t else
        json.dumps({"Helpfulness": {"score": score}, "Clarity": {"score": score}}))
    roles = Roles(ScriptedLLM(default="an answer"), judge, ScriptedLLM(optimizer_fn))
    queries = [f"question number {i}?" for i in range(40)]
    cfg = SearchConfig(beam_width=1, n_actions=1, depth=depth, max_depth_increase=max_inc)
    return run_search(roles, queries, Context(), cfg)


def test_depth_counts_states_including_the_root_as_the_original():
    # the original's is_terminal: len(state) >= depth, the root state included -> depth 20 = 19 optimisation levels
    st = _depth_run(20, 10, perfect=False)
    assert st.level == 19 and len(best_node(st).results) == 20 and st.depth == 20 and st.skips == 0
    # every level skips: +1 per level up to max_depth_increase=10 -> 29 levels, paths of 30 states
    st = _depth_run(20, 10, perfect=True)
    assert st.level == 29 and len(best_node(st).results) == 30 and st.depth == 30 and st.depth_increases == 10
    assert [r.query for r in best_node(st).results] == [f"question number {i}?" for i in range(30)]
    # the queries running out also ends a path (the original's second terminal condition)
    roles = make_roles()
    st = run_search(roles, QUERIES, Context(), SearchConfig(beam_width=1, n_actions=1, depth=20))
    assert st.finished and len(best_node(st).results) == len(QUERIES)


# ---------------------------------------------------------------- stage 1

# the rewriter appends its seed to the answer it was given: "ans1|1|2" = ans1 rewritten in round 1, then round 2
SCORES = {"ans1": 3, "ans1|1": 2, "ans1|1|2": 3, "ans1|1|2|3": 5, "ans2": 5, "ans3": 3}
ASPECTS3 = ("Helpfulness", "Clarity", "Depth")


def _reply(text):
    return text.split("## Reply\n", 1)[1].split("\n\n## Assessment", 1)[0]


def icl_judge(text, seed, temp):
    if "selected_aspects" in text:
        return json.dumps({"aspects_selection": {"reasoning": "r", "selected_aspects": list(ASPECTS3)}})
    s = SCORES.get(_reply(text), 1)
    return json.dumps({a: {"rationale": "weak" if s < 5 else "fine", "score": s} for a in ASPECTS3})


def icl_rewriter(text, seed, temp):
    cur = text.split("The original answer was:\n", 1)[1].split("\n\nThe ruthless critic's feedback was:", 1)[0]
    if cur.startswith("ans3"):
        return "I would rather not answer in JSON."
    return json.dumps({"analysis": "a", "thought": "t", "new_response": f"<START>\n{cur}|{seed}\n<END>"})


def test_icl_chain_keeps_best_by_total_and_stops_early():
    judge, rewriter = ScriptedLLM(icl_judge), ScriptedLLM(icl_rewriter)
    exs = [Example("q1", "ans1"), Example("q2", "ans2"), Example("q3", "ans3")]
    from collections import Counter
    stats = Counter()
    recs = optimize_examples(exs, judge=judge, rewriter=rewriter, cat=Catalogue.load(), stats=stats,
                             cfg=ICLConfig(rounds=5, seed=0))
    r1, r2, r3 = recs
    # a chain, as the original: round 2 rewrites the LATEST answer ans1|1 although it scored worse (2) than ans1 (3);
    # ans1|1|2 ties the best total (9 >= 9): kept; ans1|1|2|3 is perfect: stop after round 3
    inputs = [t.split("The original answer was:\n", 1)[1].split("\n", 1)[0] for t, _ in rewriter.log]
    assert [x for x in inputs if x.startswith("ans1")] == ["ans1", "ans1|1", "ans1|1|2"]
    assert r1.example.answer == "ans1|1|2|3" and r1.rounds == 3 and r1.history == (3.0, 3.0, 3.0, 5.0)
    assert r1.evaluation.all_perfect() and r1.selection.aspects == ("helpfulness", "clarity", "depth")
    # the rewriter sees the critique of the answer it rewrites (the judge's JSON)
    assert any('"score": 2' in t for t, _ in rewriter.log if "ans1|1\n" in t)
    # already perfect: never rewritten
    assert r2.example.answer == "ans2" and r2.rounds == 0 and r2.history == (5.0,)
    assert not any("ans2" in t for t, _ in rewriter.log)
    # the rewriter never gives usable output: unchanged after the round limit, counted, no crash
    assert r3.example.answer == "ans3" and r3.rounds == 5 and r3.history == (3.0,) * 6
    assert stats["rewrite_failed"] == 5 and stats["icl_rejected"] == 1 and stats["icl_kept"] == 2
    # stage 1 selects its aspects with the ruthless-critic variant of the selector (3-6 aspects)
    sel_prompt = next(t for t, _ in judge.log if "selected_aspects" in t)
    assert "ruthless critic" in sel_prompt and "AT LEAST 3 and AT MOST 6" in sel_prompt


def test_icl_best_is_chosen_by_total_not_mean():
    # the judge drops an aspect for the rewrite: mean 5.0 > 4.0 but total 10 < 12 -> the original keeps the seed
    def judge(text, seed, temp):
        if "selected_aspects" in text:
            return json.dumps({"aspects_selection": {"reasoning": "r", "selected_aspects": list(ASPECTS3)}})
        if _reply(text) == "seed":
            return json.dumps({a: {"rationale": "ok", "score": 4} for a in ASPECTS3})
        return json.dumps({a: {"rationale": "ok", "score": 5} for a in ASPECTS3[:2]})
    rewriter = ScriptedLLM(lambda t, s, x: json.dumps({"new_response": f"rewrite {s}"}))
    (rec,) = optimize_examples([Example("q", "seed")], judge=ScriptedLLM(judge), rewriter=rewriter,
                               cat=Catalogue.load(), cfg=ICLConfig(rounds=2))
    assert rec.example.answer == "seed" and rec.evaluation.total == 12 and rec.history == (4.0, 4.0, 4.0)
