"""LLM backends for DRPO: the protocol, a scripted deterministic LLM, an OpenAI-compatible HTTP client, a persistent
response cache and per-role token/cost accounting.

Protocol: ``llm.generate(prompts, *, max_tokens, temperature, top_p, seed, stop) -> list[Completion]``; a prompt is
a plain string (raw completion) or a list of chat messages ``[{"role": ..., "content": ...}]``. ``seed`` may be one int
for the whole batch or one int per prompt (the search uses distinct seeds to draw several actions from one prompt).

A backend may also accept ``on_result(i, completion)`` (and say so with ``streams_results = True``); it is called as
soon as prompt i is answered, so the cache keeps every finished answer even if the batch is interrupted.

Wrappers compose: ``Metered(Cached(HTTPLLM(...), cache), role="judge", ledger=ledger)``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import http.client
import json
import logging
import os
import random
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, Union

from jaxlm.errors import ConfigError, LLMError, RequestError  # LLMError: also importable from here

log = logging.getLogger("jaxlm.align")

Messages = list  # list[dict[str, str]]
Prompt = Union[str, Messages]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


class LLM(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], *, max_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | Sequence[int] | None = 0,
                 stop: Sequence[str] | None = None) -> list[Completion]: ...


def per_prompt_seeds(seed: int | Sequence[int] | None, n: int) -> list[int | None]:
    if seed is None or isinstance(seed, int):
        return [seed] * n
    seeds = list(seed)
    if len(seeds) != n:
        raise RequestError(f"seed: the list has {len(seeds)} entries for {n} prompts", "seed")
    return seeds


def prompt_text(prompt: Prompt) -> str:
    """A flat text view of a prompt (for scripted rules and token estimates)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)


def prefilled(prompt: str, prefix: str) -> list[dict]:
    """A user prompt plus the start of the assistant's answer (the model continues `prefix`)."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": prefix, "prefix": True}]


def ask(llm: LLM, prompts: Sequence[str], prefixes: Sequence[str], *, prefill: bool,
        prefill_stop: Sequence[str] | None = None, prefill_close: str = "", **kw) -> list[Completion]:
    """Generate; with `prefill` (and a backend that supports it) the answers are forced to start with `prefixes`,
    which steers small models into the JSON shape, and stop at `prefill_stop` (the closing bracket). An answer that
    stopped there (fewer than max_tokens tokens) gets `prefill_close` appended, the brackets the stop string cut;
    an answer that ran into the token limit is returned as it is (truncated: the parsers refuse it). Returned texts
    always include the prefix when one was used."""
    if not (prefill and getattr(llm, "supports_prefill", False)):
        return llm.generate(list(prompts), **kw)
    if prefill_stop:
        kw["stop"] = list(prefill_stop)
    limit = kw.get("max_tokens", 512)
    outs = llm.generate([prefilled(p, x) for p, x in zip(prompts, prefixes)], **kw)
    return [Completion(x + c.text + (prefill_close if c.completion_tokens < limit else ""), c.prompt_tokens,
                       c.completion_tokens, c.cached) for x, c in zip(prefixes, outs)]


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def apply_stop(text: str, stop: Sequence[str] | None) -> str:
    """Cut `text` at the first occurrence of any stop string (what an API does server-side)."""
    if not stop:
        return text
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


# ---------------------------------------------------------------- scripted LLM (tests, dry runs)


class ScriptedLLM:
    """A deterministic LLM: `respond(prompt_text, seed, temperature) -> str` decides every answer.

    `rules` is an alternative: a list of (substring, answer_or_callable); the first rule whose substring occurs in the
    prompt answers (a callable gets (prompt_text, seed)). Every call is recorded in `log` (prompt text, seed) and
    counted in `calls`; `fail_after` raises after that many prompts (simulates a killed process)."""

    def __init__(self, respond: Callable[[str, int | None, float], str] | None = None, *,
                 rules: Sequence[tuple[str, Any]] = (), default: str = "", name: str = "scripted",
                 fail_after: int | None = None):
        self.respond, self.rules, self.default, self.name = respond, list(rules), default, name
        self.fail_after = fail_after
        self.calls = 0
        self.log: list[tuple[str, int | None]] = []
        self._lock = threading.Lock()

    def _answer(self, text: str, seed, temperature) -> str:
        if self.respond is not None:
            return self.respond(text, seed, temperature)
        for needle, ans in self.rules:
            if needle in text:
                return ans(text, seed) if callable(ans) else ans
        return self.default

    streams_results = True

    def generate(self, prompts, *, max_tokens=512, temperature=0.0, top_p=1.0, seed=0, stop=None, on_result=None):
        out = []
        for i, (p, s) in enumerate(zip(prompts, per_prompt_seeds(seed, len(prompts)))):
            with self._lock:
                if self.fail_after is not None and self.calls >= self.fail_after:
                    raise KeyboardInterrupt(f"{self.name}: simulated kill after {self.calls} calls")
                self.calls += 1
            text = prompt_text(p)
            self.log.append((text, s))
            ans = apply_stop(self._answer(text, s, temperature), stop)
            out.append(Completion(ans, estimate_tokens(text), estimate_tokens(ans)))
            if on_result is not None:
                on_result(i, out[-1])
        return out


# ---------------------------------------------------------------- persistent response cache


def cache_key(model: str, prompt: Prompt, *, max_tokens: int, temperature: float, top_p: float,
              seed: int | None, stop: Sequence[str] | None) -> str:
    """Content address of one request: the model name, every sampling parameter and the prompt."""
    payload = json.dumps({"model": model, "prompt": prompt, "max_tokens": int(max_tokens),
                          "temperature": float(temperature), "top_p": float(top_p), "seed": seed,
                          "stop": list(stop) if stop else []}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """A sqlite-backed map request-key -> completion. Safe to share between threads; survives a killed process
    (each entry is committed as soon as it is written)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        # WAL + synchronous=NORMAL: every committed entry survives a killed process (only a power loss may drop the
        # last few), and a commit costs no fsync, so caching each answer as it arrives stays cheap
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, text TEXT, "
                         "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)")
        self._db.commit()

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT text, prompt_tokens, completion_tokens FROM responses WHERE key=?",
                                   (key,)).fetchone()
        return None if row is None else Completion(row[0], row[1], row[2], cached=True)

    def put(self, key: str, model: str, c: Completion) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?)",
                             (key, model, c.text, c.prompt_tokens, c.completion_tokens, time.time()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Wrapper:
    inner: LLM

    @property
    def supports_prefill(self) -> bool:
        return getattr(self.inner, "supports_prefill", False)


class Cached(_Wrapper):
    """Serve repeated requests from a ResponseCache; only misses reach the inner backend (in one batch)."""

    def __init__(self, inner: LLM, cache: ResponseCache, model: str | None = None):
        self.inner, self.cache = inner, cache
        self.name = model or getattr(inner, "name", "llm")

    def generate(self, prompts, *, max_tokens=512, temperature=0.0, top_p=1.0, seed=0, stop=None):
        seeds = per_prompt_seeds(seed, len(prompts))
        keys = [cache_key(self.name, p, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=s,
                          stop=stop) for p, s in zip(prompts, seeds)]
        out: list[Completion | None] = [self.cache.get(k) for k in keys]
        # identical requests inside one batch are sent once
        todo: dict[str, int] = {}
        for i, (k, c) in enumerate(zip(keys, out)):
            if c is None and k not in todo:
                todo[k] = i
        if todo:
            idx = list(todo.values())
            kw = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=[seeds[i] for i in idx],
                      stop=stop)
            if getattr(self.inner, "streams_results", False):
                kw["on_result"] = lambda j, c: self.cache.put(keys[idx[j]], self.name, c)
                fresh = self.inner.generate([prompts[i] for i in idx], **kw)
            else:
                fresh = self.inner.generate([prompts[i] for i in idx], **kw)
                for i, c in zip(idx, fresh):
                    self.cache.put(keys[i], self.name, c)
            got = {keys[i]: c for i, c in zip(idx, fresh)}
            for i, k in enumerate(keys):
                if out[i] is None:
                    c = got[k]
                    out[i] = c if todo[k] == i else Completion(c.text, c.prompt_tokens, c.completion_tokens, True)
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------- per-role accounting


@dataclass
class RoleUsage:
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


@dataclass
class Ledger:
    """Token and cost accounting per role (base, judge, optimizer, ...). Cache hits cost nothing.

    `prices[role] = (usd per 1M prompt tokens, usd per 1M completion tokens)`. With `budget`, requests made after
    the total cost reached it raise LLMError (a batch in flight is finished, so the budget can be exceeded by one
    batch)."""

    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    budget: float | None = None  # USD over all roles; Metered refuses new requests once it is spent
    roles: dict[str, RoleUsage] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total_cost(self) -> float:
        with self._lock:
            return sum(u.cost for u in self.roles.values())

    def add(self, role: str, c: Completion) -> None:
        with self._lock:
            u = self.roles.setdefault(role, RoleUsage())
            if c.cached:
                u.cache_hits += 1
                return
            u.calls += 1
            u.prompt_tokens += c.prompt_tokens
            u.completion_tokens += c.completion_tokens
            pin, pout = self.prices.get(role, (0.0, 0.0))
            u.cost += (c.prompt_tokens * pin + c.completion_tokens * pout) / 1e6

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {r: dict(vars(u)) for r, u in sorted(self.roles.items())}


class Metered(_Wrapper):
    """Count every completion of `inner` under `role` in `ledger`."""

    def __init__(self, inner: LLM, role: str, ledger: Ledger):
        self.inner, self.role, self.ledger = inner, role, ledger
        self.name = getattr(inner, "name", role)

    def generate(self, prompts, **kw):
        b = self.ledger.budget
        if b is not None and self.ledger.total_cost >= b:
            raise LLMError(f"{self.role}: the budget of ${b:.4f} is spent (${self.ledger.total_cost:.4f}); "
                           f"re-run with a larger budget: answers so far are cached")
        out = self.inner.generate(prompts, **kw)
        for c in out:
            self.ledger.add(self.role, c)
        return out


# ---------------------------------------------------------------- OpenAI-compatible HTTP backend


class _Retryable(Exception):
    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


class HTTPLLM:
    """Any OpenAI-compatible server (jaxlm's own, vLLM, hosted APIs).

    api='chat' posts to {base_url}/chat/completions (string prompts become one user message); api='completions'
    posts raw strings to {base_url}/completions. The API key is read from the environment variable named
    `api_key_env` at call time; it is sent only in the Authorization header and never logged, cached or shown in
    repr. Up to `concurrency` requests run at once; timeouts, 429, 5xx and malformed bodies are retried with
    exponential backoff (honouring Retry-After) up to `max_retries` times, after which LLMError is raised."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY", api: str = "chat",
                 concurrency: int = 4, timeout: float = 60.0, max_retries: int = 6, backoff: float = 1.0,
                 max_backoff: float = 30.0, retry_seed: int = 0):
        if api not in ("chat", "completions"):
            raise ConfigError(f"api={api!r}: expected 'chat' or 'completions'")
        self.base_url, self.model, self.api = base_url.rstrip("/"), model, api
        self.api_key_env = api_key_env
        self.concurrency, self.timeout, self.max_retries = max(1, concurrency), timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.name = model
        self.stats = {"requests": 0, "retries": 0, "timeouts": 0, "http_429": 0, "http_5xx": 0, "malformed": 0}
        self._lock = threading.Lock()
        self._rng = random.Random(retry_seed)

    def __repr__(self) -> str:
        return f"HTTPLLM(base_url={self.base_url!r}, model={self.model!r}, api={self.api!r})"

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                h["Authorization"] = f"Bearer {key}"
        return h

    def _body(self, prompt: Prompt, seed, max_tokens, temperature, top_p, stop) -> dict:
        body: dict[str, Any] = {"model": self.model, "max_tokens": int(max_tokens), "temperature": float(temperature),
                                "top_p": float(top_p)}
        if seed is not None:
            body["seed"] = int(seed)
        if stop:
            body["stop"] = list(stop)[:4]  # the OpenAI API accepts at most 4 stop strings
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        else:
            if not isinstance(prompt, str):
                raise RequestError("prompts: api='completions' needs string prompts; use api='chat' for messages", "prompt")
            body["prompt"] = prompt
        return body

    def _bump(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _once(self, body: dict) -> Completion:
        url = f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=self._headers(), method="POST")
        self._bump("requests")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            ra = e.headers.get("Retry-After") if e.headers else None
            try:
                ra_s = float(ra) if ra is not None else None
            except ValueError:
                ra_s = None
            if e.code == 429:
                self._bump("http_429")
                raise _Retryable("HTTP 429", ra_s) from None
            if 500 <= e.code < 600:
                self._bump("http_5xx")
                raise _Retryable(f"HTTP {e.code}", ra_s) from None
            raise LLMError(f"{url}: HTTP {e.code} (not retried)") from None
        except (socket.timeout, TimeoutError) as e:
            self._bump("timeouts")
            raise _Retryable(f"timeout after {self.timeout}s") from e
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                self._bump("timeouts")
            raise _Retryable(f"connection error: {type(reason).__name__}") from None
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            self._bump("malformed")
            raise _Retryable(f"malformed response body ({type(e).__name__})") from None
        usage = data.get("usage") or {}
        pt = usage.get("prompt_tokens")
        ct = usage.get("completion_tokens")
        ptxt = body.get("prompt") or prompt_text(body.get("messages", []))
        return Completion(text, int(pt) if pt is not None else estimate_tokens(ptxt),
                          int(ct) if ct is not None else estimate_tokens(text))

    def _with_retries(self, body: dict) -> Completion:
        for attempt in range(self.max_retries + 1):
            try:
                return self._once(body)
            except _Retryable as e:
                if attempt == self.max_retries:
                    raise LLMError(f"{self.base_url} model={self.model}: giving up after {attempt + 1} attempts "
                                   f"({e})") from None
                with self._lock:
                    jitter = self._rng.uniform(0.5, 1.0)
                delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * jitter
                if e.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, e.retry_after))
                self._bump("retries")
                log.info("retrying %s (attempt %d/%d) in %.2fs: %s", self.model, attempt + 1, self.max_retries,
                         delay, e)
                time.sleep(delay)
        raise AssertionError("unreachable")

    streams_results = True

    def generate(self, prompts, *, max_tokens=512, temperature=0.0, top_p=1.0, seed=0, stop=None, on_result=None):
        seeds = per_prompt_seeds(seed, len(prompts))
        bodies = [self._body(p, s, max_tokens, temperature, top_p, stop) for p, s in zip(prompts, seeds)]

        def one(i: int) -> Completion:
            c = self._with_retries(bodies[i])
            # some servers ignore extra stop strings: cut locally as well
            c = Completion(apply_stop(c.text, stop), c.prompt_tokens, c.completion_tokens)
            if on_result is not None:
                on_result(i, c)
            return c

        if len(bodies) <= 1 or self.concurrency == 1:
            return [one(i) for i in range(len(bodies))]
        with cf.ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as ex:
            return list(ex.map(one, range(len(bodies))))
