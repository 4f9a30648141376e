"""Stage 2: system-prompt beam search with dynamic rewarding.

Level t consumes training query t (the root, level 0, answers query 0). For every node of the beam, the optimizer reads the node's last result
(prompt, query, answer, evaluation, the last few prompt versions) and proposes `n_actions` new system prompts; each
is answered by the base model on query t (with in-context examples retrieved for that query) and rewarded by the
judge. All children are ranked by the mean reward of their path (root excluded) and the best `beam_width` survive.
Skip rule: a node whose last evaluation is empty, all 5s or above `skip_threshold` is not rewritten (its only action
keeps the prompt), and the depth grows by one (at most once per level, at most `max_depth_increase` in total).

Depth, as in the original: a path holds at most `depth` states INCLUDING the root, so depth=20 means 19
optimisation levels (queries 0..19), and with every skip allowance used, 29 levels (a path of 30 states).

`init_search` and `beam_step` are pure functions of immutable `SearchState`s; the LLMs and helpers come in as
arguments. `run_search` adds a JSON checkpoint after every level and resumes from it; with a response cache around
the LLMs, a resumed run re-issues no backend call for completed work.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from jaxlm.align.llm import LLM, ask
from jaxlm.align.prompts import DEFAULT_SYSTEM_PROMPT, STOP, Template, base_prompt, load_template
from jaxlm.align.reward import AspectCache, Catalogue, JudgeConfig, dynamic_reward, evaluation_json, extract_field
from jaxlm.align.state import Evaluation, Example, LevelResult, Node, SearchState, from_json, to_json
from jaxlm.errors import CheckpointError, ConfigError

CHECKPOINT_VERSION = 2  # 2: `depth` counts the states of a path including the root


@dataclass(frozen=True)
class SearchConfig:
    beam_width: int = 2
    n_actions: int = 3
    depth: int = 20  # states on a path including the root (the original's is_terminal: len(state) >= depth)
    max_depth_increase: int = 10
    skip_threshold: float = 4.5
    skip: bool = True  # the skip rule (False: every node is always rewritten; an ablation, not the original)
    history: int = 5
    initial_prompt: str = DEFAULT_SYSTEM_PROMPT
    fmt: str = "raw"  # base prompt format: 'raw' (original) or 'chat'
    base_max_tokens: int = 2048  # the original's limit for every role
    base_temperature: float = 0.0
    base_top_p: float = 1.0
    opt_max_tokens: int = 2048
    opt_temperature: float = 0.2
    opt_top_p: float = 0.95
    opt_prefill: bool = False  # start the optimizer's answer with '{"new_system_prompt": "' (local backends)
    seed: int = 0


@dataclass(frozen=True)
class Roles:
    base: LLM
    judge: LLM
    optimizer: LLM
    selector: LLM | None = None  # picks aspects; defaults to the judge


@dataclass
class Context:
    """Everything the search needs besides the LLMs: the aspect catalogue and cache, ICL retrieval, counters."""

    cat: Catalogue = field(default_factory=Catalogue.load)
    aspect_cache: AspectCache = field(default_factory=AspectCache)
    retrieve: Callable[[str], tuple[Example, ...]] = lambda q: ()
    stats: Counter = field(default_factory=Counter)
    judge_cfg: JudgeConfig = field(default_factory=JudgeConfig)
    optimizer_template: Template = field(default_factory=lambda: load_template("optimizer"))


# ---------------------------------------------------------------- pure pieces


def should_skip(ev: Evaluation, cfg: SearchConfig) -> bool:
    return cfg.skip and ((not ev.ok) or ev.all_perfect() or ev.reward > cfg.skip_threshold)


def respond(base: LLM, pairs: Sequence[tuple[str, str]], ctx: Context, cfg: SearchConfig
            ) -> list[tuple[str, tuple[Example, ...]]]:
    """Base-model answers for (system_prompt, query) pairs, with retrieved examples."""
    exs = [tuple(ctx.retrieve(q)) for _, q in pairs]
    prompts = [base_prompt(p, e, q, cfg.fmt) for (p, q), e in zip(pairs, exs)]
    outs = base.generate(prompts, max_tokens=cfg.base_max_tokens, temperature=cfg.base_temperature,
                         top_p=cfg.base_top_p, seed=cfg.seed, stop=list(STOP))
    return [(o.text.strip(), e) for o, e in zip(outs, exs)]


def evaluate_prompts(roles: Roles, pairs: Sequence[tuple[str, str]], ctx: Context, cfg: SearchConfig
                     ) -> list[LevelResult]:
    answers = respond(roles.base, pairs, ctx, cfg)
    evs = dynamic_reward(roles.judge, [(q, a) for (_, q), (a, _) in zip(pairs, answers)], cat=ctx.cat,
                         cache=ctx.aspect_cache, stats=ctx.stats, cfg=ctx.judge_cfg, selector=roles.selector)
    return [LevelResult(p, q, a, ev, e) for (p, q), (a, e), ev in zip(pairs, answers, evs)]


def version_history(node: Node, n: int = 5) -> str:
    """The last `n` system prompts of the path, the current one included (repeats kept, as in the original):
    '---Version 1---' ... then '---Current Version---' before the current prompt."""
    prompts = [r.system_prompt for r in node.results][-n:]
    parts = [f"---Version {i + 1}---\n{p}" for i, p in enumerate(prompts[:-1])]
    return "\n".join(parts + [f"---Current Version---\n{prompts[-1]}"])


def optimizer_prompt(node: Node, cfg: SearchConfig, ctx: Context) -> str:
    last = node.results[-1]
    return ctx.optimizer_template.render(system_prompt=last.system_prompt, history=version_history(node, cfg.history),
                                         query=last.query, output=last.output,
                                         evaluation=evaluation_json(last.evaluation))


def parse_new_prompt(text: str, stats: Counter) -> str | None:
    """The optimizer's 'new_system_prompt'; None when unusable (counted as 'action_failed')."""
    out = extract_field(text, "new_system_prompt", stats, min_len=10,
                        placeholders=("...", "the full new system prompt", "the complete new system prompt"))
    if out is None:
        stats["action_failed"] += 1
    return out


def propose(optimizer: LLM, beam: Sequence[Node], cfg: SearchConfig, ctx: Context) -> list[list[str]]:
    """New prompts per node (one batched call: n_actions samples per non-skipped node, distinct seeds).
    A skipped node, or one whose every proposal was unusable, keeps its current prompt."""
    work = [i for i, n in enumerate(beam) if not should_skip(n.results[-1].evaluation, cfg)]
    prompts, seeds = [], []
    for i in work:
        p = optimizer_prompt(beam[i], cfg, ctx)
        prompts += [p] * cfg.n_actions
        seeds += [cfg.seed + j for j in range(cfg.n_actions)]
    outs = ask(optimizer, prompts, ['{"new_system_prompt": "'] * len(prompts), prefill=cfg.opt_prefill,
               prefill_stop=['"}'], prefill_close='"}', max_tokens=cfg.opt_max_tokens, temperature=cfg.opt_temperature,
               top_p=cfg.opt_top_p, seed=seeds) if prompts else []
    actions: list[list[str]] = [[n.prompt] for n in beam]
    for k, i in enumerate(work):
        got = [parse_new_prompt(o.text, ctx.stats) for o in outs[k * cfg.n_actions:(k + 1) * cfg.n_actions]]
        got = [g for g in got if g is not None]
        if got:
            actions[i] = got
        else:
            ctx.stats["all_actions_failed"] += 1
    return actions


def init_search(roles: Roles, queries: Sequence[str], ctx: Context, cfg: SearchConfig) -> SearchState:
    if len(queries) < 2:
        raise ConfigError(f"queries: the search needs at least 2 training queries, got {len(queries)}")
    if cfg.depth < 1:
        raise ConfigError(f"depth={cfg.depth}: a path holds at least the root state (depth >= 1)")
    (root,) = evaluate_prompts(roles, [(cfg.initial_prompt, queries[0])], ctx, cfg)
    return SearchState(level=0, depth=cfg.depth, depth_increases=0, beam=(Node((root,)),), finished=cfg.depth <= 1)


def rank(children: Sequence[Node], width: int) -> tuple[Node, ...]:
    """The `width` children with the highest mean path reward; ties keep generation order (parent, action)."""
    order = sorted(range(len(children)), key=lambda i: (-children[i].mean_reward, i))
    return tuple(children[i] for i in order[:width])


def beam_step(state: SearchState, roles: Roles, queries: Sequence[str], ctx: Context, cfg: SearchConfig
              ) -> SearchState:
    """One level: expand every beam node, evaluate the children on the next query, keep the best paths."""
    if state.finished:
        return state
    t = state.level + 1
    query = queries[t]
    skipped = any(should_skip(n.results[-1].evaluation, cfg) for n in state.beam)
    actions = propose(roles.optimizer, state.beam, cfg, ctx)
    parents = [(i, a) for i, acts in enumerate(actions) for a in acts]
    results = evaluate_prompts(roles, [(a, query) for _, a in parents], ctx, cfg)
    children = [Node(state.beam[i].results + (r,)) for (i, _), r in zip(parents, results)]
    beam = rank(children, cfg.beam_width)
    depth, inc = state.depth, state.depth_increases
    if skipped and inc < cfg.max_depth_increase:
        depth, inc = depth + 1, inc + 1
    # the paths now hold t + 1 states: terminal at `depth` states or when the queries run out (the original)
    return SearchState(level=t, depth=depth, depth_increases=inc, beam=beam,
                       finished=t + 1 >= depth or t + 1 >= len(queries), skips=state.skips + int(skipped),
                       history=state.history + (tuple(n.mean_reward for n in beam),))


def best_node(state: SearchState) -> Node:
    return rank(state.beam, 1)[0]


# ---------------------------------------------------------------- checkpointed driver


def _fingerprint(queries: Sequence[str], cfg: SearchConfig) -> dict:
    return {"config": dataclasses.asdict(cfg), "queries": list(queries)}


def save_checkpoint(path: str, state: SearchState, queries: Sequence[str], cfg: SearchConfig,
                    stats: Counter | None = None) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    data = {"version": CHECKPOINT_VERSION, **_fingerprint(queries, cfg), "state": to_json(state),
            "stats": dict(stats or {})}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)  # atomic: a kill leaves either the old or the new checkpoint


def load_checkpoint(path: str, queries: Sequence[str], cfg: SearchConfig) -> tuple[SearchState, dict]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read search checkpoint {path}: {e}") from None
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')!r}, expected {CHECKPOINT_VERSION}")
    fp = _fingerprint(queries, cfg)
    for key in ("config", "queries"):
        if data.get(key) != json.loads(json.dumps(fp[key])):
            raise CheckpointError(f"{path}: the checkpoint's '{key}' differs from this run's; use another --out "
                                  f"directory or the same settings")
    state = from_json(data["state"])
    if not isinstance(state, SearchState):
        raise CheckpointError(f"{path}: 'state' is not a SearchState")
    return state, data.get("stats", {})


def run_search(roles: Roles, queries: Sequence[str], ctx: Context, cfg: SearchConfig, *,
               checkpoint: str | None = None, on_level: Callable[[SearchState], None] | None = None) -> SearchState:
    """Run the search to the end, checkpointing after the root and after every level (resuming if one exists)."""
    if checkpoint and os.path.exists(checkpoint):
        state, stats = load_checkpoint(checkpoint, queries, cfg)
        if not ctx.stats:  # counters of the interrupted run continue (calls served by the cache count again)
            ctx.stats.update(stats)
    else:
        state = init_search(roles, queries, ctx, cfg)
        if checkpoint:
            save_checkpoint(checkpoint, state, queries, cfg, ctx.stats)
    while not state.finished:
        state = beam_step(state, roles, queries, ctx, cfg)
        if checkpoint:
            save_checkpoint(checkpoint, state, queries, cfg, ctx.stats)
        if on_level:
            on_level(state)
    return state


def export_trace(node: Node) -> dict:
    """The path in the official output.json shape: level i -> {Prompt, Evaluation of the prompt} (+ query/output)."""
    return {f"level {i}": {"Prompt": r.system_prompt, "Evaluation of the prompt": r.evaluation.as_dict(),
                           "Query": r.query, "Output": r.output, "Reward": r.reward}
            for i, r in enumerate(node.results)}
