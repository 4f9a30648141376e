"""The lm-evaluation-harness model `jaxlm`: any checkpoint `jaxlm.io.load_model` reads, evaluated by the harness.

    python -m jaxlm eval --model jaxlm --model_args path=runs/crystal-tiny,step=300 --tasks jaxlm_heldout_cloze
    python -m jaxlm eval --model jaxlm --model_args path=model.gguf,mesh=1x2 --tasks arc_easy --apply_chat_template

(`python -m jaxlm eval` is the harness's own CLI, `lm_eval`, with this model registered and jaxlm's offline tasks
on the include path.) In Python: `import jaxlm.eval` registers the model, then
`lm_eval.simple_evaluate(model="jaxlm", model_args={...}, tasks=[...], task_manager=jaxlm.eval.task_manager())`
or `simple_evaluate(model=JaxlmLM(model=..., tokenizer=...), ...)`.

model_args: path (HF dir, .gguf, orbax run dir, quantized dir; default SmolLM2-135M-Instruct), step (a run's
checkpoint), tokenizer (a tokenizer file/dir when the checkpoint has none; a run of the recipes uses the embedded
corpus' BPE by default), mesh (e.g. 1x2), context_len, truncation ('error' (default): a request longer than the
context is an error naming its lengths; 'left': drop the oldest context tokens, as the harness' HF model does),
batch_tokens (tokens per scoring forward), max_gen_toks, seed, add_bos_token, dtype, family; the harness'
--batch_size sets the rows of a generation batch (default 16).

loglikelihood / loglikelihood_rolling score with `jaxlm.infer.logprobs.Scorer` (length-bucketed jitted full
forwards, one compile per power-of-two length and row count); generate_until runs `jaxlm.infer.Generator` (greedy
unless do_sample, stop strings = `until`). Every decoder family, Mamba-2 and Phi-Mamba work the same way.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

import lm_eval.models  # noqa: F401  (the harness' own models first: its registry imports them only while empty)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from jaxlm.errors import ConfigError, PromptTooLongError


def _bool(v):
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return None if v is None else bool(v)


def run_tokenizer(path):
    """The tokenizer of a jaxlm training run (its meta records `--tokenizer`; 'default' = the embedded corpus' BPE),
    or None when `path` is not a run directory."""
    from jaxlm.io.load import checkpoint_format

    if checkpoint_format(path) != "run":
        return None
    meta = read_run_meta(path)
    tok = meta.get("tokenizer", "default")
    from jaxlm.data import default_tokenizer, load_tokenizer

    return default_tokenizer() if tok in (None, "default") else load_tokenizer(tok)


def read_run_meta(path, step: int | None = None) -> dict:
    """The JSON `meta` item of a run's checkpoint `step` (default: the latest)."""
    import orbax.checkpoint as ocp

    from jaxlm.io.run import _manager, checkpoint_dir

    mgr = _manager(checkpoint_dir(path))
    try:
        steps = sorted(mgr.all_steps())
        s = steps[-1] if step is None else int(step)
        return mgr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        mgr.close()


@register_model("jaxlm")
class JaxlmLM(TemplateLM):
    """The harness model over a jaxlm model (see the module docstring for model_args)."""

    def __init__(self, path=None, *, model=None, tokenizer=None, step=None, mesh=None, context_len=None,
                 truncation: str = "error", batch_tokens=8192, max_gen_toks=256, seed=0, add_bos_token=None,
                 dtype=None, family=None, batch_size=None, max_batch_size=None, device=None, **unused):
        super().__init__()
        from jaxlm.infer.generate import Generator
        from jaxlm.infer.logprobs import Scorer

        if unused:
            raise ConfigError(f"--model_args: unknown key(s) {sorted(unused)} for the jaxlm model (accepted: path, "
                              f"step, tokenizer, mesh, context_len, truncation, batch_tokens, max_gen_toks, seed, "
                              f"add_bos_token, dtype, family)")
        if truncation not in ("error", "left"):
            raise ConfigError(f"--model_args truncation={truncation!r}: expected 'error' or 'left'")
        self.mesh = _mesh(mesh)
        if model is None:
            from jaxlm.io.load import load_model

            opts = {k: v for k, v in (("step", None if step is None else int(step)), ("dtype", dtype),
                                      ("family", family)) if v is not None}
            model, _cfg, tok = load_model(path, **opts)
            if tokenizer is None:
                tokenizer = tok if tok is not None else (run_tokenizer(path) if path is not None else None)
        if isinstance(tokenizer, str):
            from jaxlm.io.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        if tokenizer is None:
            raise ConfigError(f"model {path}: no tokenizer stored with the checkpoint; pass "
                              f"--model_args tokenizer=PATH (tokenizer.json, tokenizer.model or a .gguf)")
        self.model, self.tokenizer, self.path = model, tokenizer, path
        self.truncation = truncation
        self.gen = Generator(model, tokenizer, mesh=self.mesh, context_len=None if context_len is None else
                             int(context_len), truncate=truncation)
        self.scorer = Scorer(graphdef=self.gen.graphdef, state=self.gen.state, cfg=model.cfg, mesh=self.mesh,
                             context_len=self.gen.context_len, max_tokens=int(batch_tokens))
        self.max_gen_toks, self.seed = int(max_gen_toks), int(seed)
        from jaxlm.infer.cache import cache_class_for

        try:
            cache_class_for(model)
            self.cached = True
        except TypeError:  # no decode cache for this family (Phi-Mamba): generation by full forwards
            self.cached = False
        # rows of one generation batch: --batch_size when > 1 (the harness passes its default 1 when none is given),
        # else 16; scoring batches by tokens (batch_tokens) whatever it says
        self.gen_batch = int(batch_size) if str(batch_size or "").isdigit() and int(batch_size) > 1 else 16
        self.add_bos = _bool(add_bos_token)
        self.calls = Counter()  # requests scored / generated (observability, tests)

    # ---- what the harness asks of a model
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else getattr(self.model.cfg, "eos_token_id",
                                                                                        None)
        if eos is None:
            raise ConfigError(f"tokenizer {self.tokenizer.name}: no EOS token (needed as the empty context)")
        return int(eos)

    @property
    def gen_eos(self) -> int | None:
        try:
            return self.eot_token_id
        except ConfigError:
            return None

    @property
    def prefix_token_id(self) -> int:
        return int(self.tokenizer.bos_id) if self.tokenizer.bos_id is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.gen.context_len

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name", "tokenizer")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw) -> list[int]:
        add = self.add_bos if add_special_tokens is None else add_special_tokens
        return list(self.tokenizer.encode(string, add_bos=add))

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def chat_template(self, chat_template=False):
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        from jaxlm.infer.text import plain_chat_prompt

        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)
        return plain_chat_prompt(chat_history)

    # ---- scoring
    def _fit(self, i: int, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """The model is fed (context + continuation)[:-1]: up to max_length + 1 tokens fit (as in the harness' HF
        model)."""
        C = self.max_length + 1
        if len(ctx) + len(cont) <= C:
            return ctx, cont
        if self.truncation == "left" and len(cont) < C:
            return (ctx + cont)[-C:][:C - len(cont)], cont
        raise PromptTooLongError(
            f"request {i}: context {len(ctx)} + continuation {len(cont)} tokens = {len(ctx) + len(cont)} exceed the "
            f"model's context length {C - 1} (+1: the last token is not fed); use --model_args truncation=left to "
            f"drop the oldest context tokens")

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
        pairs = [self._fit(i, list(c), list(x)) for i, (_, c, x) in enumerate(requests)]
        self.calls["loglikelihood"] += len(pairs)
        return self.scorer.loglikelihood(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of logprobs of each whole string, in disjoint windows of the model's context (the first token is
        predicted from the prefix token)."""
        windows, owner = [], []
        for i, req in enumerate(requests):
            (string,) = req.args
            toks = self.tok_encode(string, add_special_tokens=False)
            for w in get_rolling_token_windows(token_list=toks, prefix_token=self.prefix_token_id,
                                               max_seq_len=self.max_length, context_len=1):
                windows.append(make_disjoint_window(w))
                owner.append(i)
        self.calls["loglikelihood_rolling"] += len(requests)
        scores = self.scorer.loglikelihood(windows)
        out = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores):
            out[i] += lp
        return out

    # ---- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled with do_sample / temperature > 0) completions cut at the `until` strings. Repeats of
        one request get different seeds (pass@k needs distinct samples)."""
        seen: Counter = Counter()
        groups: dict = defaultdict(list)
        for i, req in enumerate(requests):
            ctx, kw = req.args
            kw = dict(kw or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eos = self.tokenizer.decode([self.gen_eos]) if self.gen_eos is not None else None
            max_new = int(kw.pop("max_gen_toks", kw.pop("max_new_tokens", self.max_gen_toks)))
            temp = float(kw.pop("temperature", 0.0) or 0.0)
            do_sample = _bool(kw.pop("do_sample", None))
            if do_sample and temp == 0.0:
                temp = 1.0
            if do_sample is False:
                temp = 0.0
            top_p = float(kw.pop("top_p", 1.0) or 1.0)
            top_k = int(kw.pop("top_k", 0) or 0)
            key = (ctx, repr(sorted(until)), max_new, temp, top_p, top_k)
            seed = self.seed + seen[key]
            seen[key] += 1
            stops = [s for s in until if s and s != eos]
            groups[(tuple(stops), max_new, temp, top_p, top_k)].append((i, ctx, seed))
        out = [""] * len(requests)
        for (stops, max_new, temp, top_p, top_k), items in groups.items():
            for b in range(0, len(items), self.gen_batch):
                chunk = items[b:b + self.gen_batch]
                if self.cached:
                    texts = self.gen.generate([c for _, c, _ in chunk], max_new_tokens=max_new, temperature=temp,
                                              top_p=top_p, top_k=top_k, seed=[s for _, _, s in chunk],
                                              stop=list(stops) or None)
                else:
                    texts = self._generate_uncached([c for _, c, _ in chunk], max_new, temp, top_p, top_k,
                                                    [s for _, _, s in chunk], list(stops))
                for (i, _, _), t in zip(chunk, texts):
                    out[i] = t
        self.calls["generate_until"] += len(requests)
        return out

    def _generate_uncached(self, contexts, max_new, temp, top_p, top_k, seeds, stops):
        """generate_until for models without a decode cache: one full forward of every live row per new token."""
        rows = [self.gen.fit_context(self.tok_encode(c), max_new) for c in contexts]
        rngs = [np.random.default_rng(s) for s in seeds]
        new: list[list[int]] = [[] for _ in rows]
        texts = [""] * len(rows)
        live = list(range(len(rows)))
        eos = self.gen.eos_ids
        for _ in range(max_new):
            if not live:
                break
            logits = self.scorer.next_logits([rows[i] + new[i] for i in live])
            for i, lg in zip(list(live), logits):
                t = _sample(lg, temp, top_p, top_k, rngs[i])
                if t in eos:
                    live.remove(i)
                    continue
                new[i].append(t)
                texts[i] = self.tokenizer.decode(new[i])
                cut = min((texts[i].find(s) for s in stops if s in texts[i]), default=-1)
                if cut >= 0:
                    texts[i] = texts[i][:cut]
                    live.remove(i)
        return texts


def _sample(logits, temp: float, top_p: float, top_k: int, rng) -> int:
    """Greedy (temp 0) or temperature / top-k / top-p sampling of one token from logits [V] (host side)."""
    if temp <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temp
    if top_k:
        z[np.argsort(-z)[top_k:]] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))


def _mesh(spec):
    """A mesh from '1x2' (devices prepared when jax is not yet initialised), a Mesh, or None."""
    if spec is None or spec == "" or not isinstance(spec, str):
        return spec or None
    from jaxlm.sharding import make_mesh, prepare_devices

    spec = spec.replace("_", "x")
    try:
        prepare_devices(spec)
    except Exception:  # noqa: BLE001 - jax already initialised: use the devices it has
        pass
    return make_mesh(spec)


__all__ = ["JaxlmLM", "run_tokenizer", "read_run_meta"]
