"""An OpenAI-compatible HTTP server over a `Generator`, with continuous batching.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (``"stream": true`` answers with
server-sent events ending in ``data: [DONE]``), GET /health, and vLLM's tokenizer endpoints POST /tokenize,
POST /detokenize, GET /tokenizer_info (also under /v1/), which lm-evaluation-harness' `tokenizer_backend=remote`
uses.

Log-probabilities, as vLLM returns them (jaxlm.infer.logprobs does the math; values are the model's own
distribution, before temperature and the other sampling transforms):
- completions: ``logprobs: k`` (0..max_logprobs) gives ``choices[i].logprobs = {tokens, token_logprobs,
  top_logprobs, text_offset}`` for the generated tokens (the top k alternatives per position, plus the chosen
  token); ``echo: true`` puts the prompt before the completion, in the text and in the logprobs (the first prompt
  token has logprob null); ``max_tokens: 0`` with echo scores the prompt only. Prompts may be token ids (one list,
  or a list of lists).
- chat: ``logprobs: true`` and ``top_logprobs: k`` give ``choices[i].logprobs.content = [{token, logprob, bytes,
  top_logprobs: [...]}, ...]``.
More than `max_logprobs` (default 20) alternatives answers 400 naming the field.

Threads: the stdlib `ThreadingHTTPServer` runs one thread per connection; those threads only parse, validate and
tokenize, then hand requests to one `BatchWorker` thread that owns the device state. The worker admits every waiting
request into a free row of its running `DecodeBatch` (prefilled together), steps the whole batch one token at a time,
and routes each row's tokens to its request's queue. A request that finishes (or whose client disconnected) frees
its row at once; the others never notice.

Request fields understood besides the OpenAI ones: top_k, min_p, repetition_penalty, ignore_eos, stop_token_ids.
Unsupported OpenAI options (a nonzero presence/frequency penalty, tools, best_of > 1) answer HTTP 400.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from jaxlm.errors import BadRequest  # also importable from here
from jaxlm.infer.generate import Generator, PromptTooLongError, Request, advance
from jaxlm.infer.logprobs import logprobs_np
from jaxlm.infer.sampling import SamplingError
from jaxlm.infer.text import validate_messages

MAX_N = 8
MAX_LOGPROBS = 20


@dataclass
class Job:
    """One row of work: a `Request` plus where its events go."""

    req: Request
    index: int                      # choice index in the response
    out: "queue.Queue"              # shared by all choices of one HTTP request
    prompt_index: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    logprobs: int | None = None     # None: no logprobs; k >= 0: the drawn token's logprob and the top k


_DONE = object()


class BatchWorker(threading.Thread):
    """Owns the DecodeBatch; admits jobs into free rows and steps all live rows together."""

    def __init__(self, generator: Generator, max_batch: int = 8):
        super().__init__(daemon=True, name="jaxlm-batch-worker")
        self.g, self.max_batch = generator, max_batch
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.stop_event = threading.Event()
        self.max_live = 0               # most rows decoding at once (observability, tests)
        self.log: list[tuple[str, int]] = []   # (finish reason, tokens) per finished job
        self.live: dict[int, Job] = {}

    def submit(self, jobs: list[Job]):
        for j in jobs:
            self.inbox.put(j)

    def shutdown(self):
        self.stop_event.set()
        self.inbox.put(None)  # wake the worker

    # -- worker loop
    def run(self):
        batch = self.g.new_batch(1)
        while not self.stop_event.is_set():
            try:
                batch = self._tick(batch)
            except Exception as e:  # noqa: BLE001 - fail the jobs in flight, keep serving
                traceback.print_exc()
                for job in list(self.live.values()):
                    job.error = f"generation failed: {type(e).__name__}: {e}"
                    self._finish(job, "error")
                self.live.clear()
                batch = self.g.new_batch(1)

    def _finish(self, job: Job, reason: str):
        self.log.append((reason, len(job.req.tokens)))
        job.out.put((job.index, _DONE, None))

    def _admit(self, batch):
        new: list[Job] = []
        block = not self.live
        while len(self.live) + len(new) < self.max_batch:
            try:
                job = self.inbox.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                break
            block = False
            if job is None:
                continue
            if job.cancelled.is_set():
                self._finish(job, "cancelled")
                continue
            new.append(job)
        if not new:
            return batch
        if not self.live:
            batch = self.g.new_batch(len(new))  # idle: start over at the size this work needs
        try:
            batch.grow_rows(len(self.live) + len(new))
            # room for the longest request at once: fewer (recompiling) capacity changes than growing token by token
            batch.ensure_capacity(max(len(j.req.prompt) + j.req.max_new_tokens for j in new))
            rows = batch.free_rows()[:len(new)]
            want = any(j.logprobs is not None for j in new)
            out = batch.add(rows, [j.req.prompt for j in new], [j.req.params for j in new], with_logits=want)
            toks, logits = (np.asarray(out[0]), np.asarray(out[1])) if want else (np.asarray(out), None)
        except Exception as e:
            for j in new:
                j.error = f"generation failed: {type(e).__name__}: {e}"
                self._finish(j, "error")
            raise
        for i, (r, j, t) in enumerate(zip(rows, new, toks)):
            j.req.row = r
            self.live[r] = j
            self._emit(batch, r, j, int(t), None if logits is None else logits[i])
        return batch

    def _emit(self, batch, row: int, job: Job, token: int, logits=None):
        info = None
        if job.logprobs is not None and logits is not None:  # every drawn token, a stop token included
            lp = logprobs_np(logits)
            top = np.argsort(-lp, kind="stable")[:job.logprobs]
            info = (token, float(lp[token]), [(int(t), float(lp[t])) for t in top])
        ev = advance(job.req, token)
        ev.index = job.index
        if ev.text or ev.token is not None or ev.finish_reason:
            job.out.put((job.index, ev, info))
        if job.req.done:
            batch.free(row)
            del self.live[row]
            self._finish(job, job.req.finish_reason)

    def _tick(self, batch):
        for r, job in list(self.live.items()):
            if job.cancelled.is_set():
                batch.free(r)
                del self.live[r]
                self._finish(job, "cancelled")
        batch = self._admit(batch)
        self.max_live = max(self.max_live, len(self.live))
        if not self.live:
            return batch
        want = any(j.logprobs is not None for j in self.live.values())
        out = batch.step(with_logits=want)
        toks, logits = (np.asarray(out[0]), np.asarray(out[1])) if want else (np.asarray(out), None)
        for r, job in list(self.live.items()):
            self._emit(batch, r, job, int(toks[r]), None if logits is None else logits[r])
        return batch


# ---------------------------------------------------------------- request parsing

def _get(body: dict, name: str, types, default=None):
    v = body.get(name, default)
    if v is None:
        return default
    if types is not None and (isinstance(v, bool) and bool not in types or not isinstance(v, types)):
        raise BadRequest(f"'{name}': expected {' or '.join(t.__name__ for t in types)}, got {v!r}", name)
    return v


def parse_logprobs(body: dict, chat: bool, max_logprobs: int) -> tuple[int | None, bool]:
    """(k or None, echo): how many alternatives per position the request wants, and whether to echo the prompt."""
    if chat:
        want = _get(body, "logprobs", (bool,), False)
        k = _get(body, "top_logprobs", (int,), None)
        if k is not None and not want:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        name = "top_logprobs"
        k = (k or 0) if want else None
        if body.get("echo"):
            raise BadRequest("'echo' is a completions option, not a chat one", "echo")
        echo = False
    else:
        k = _get(body, "logprobs", (int,), None)
        name = "logprobs"
        echo = _get(body, "echo", (bool,), False)
    if k is not None and not 0 <= k <= max_logprobs:
        raise BadRequest(f"'{name}'={k}: must be between 0 and {max_logprobs} (the most this server returns per "
                         f"token; see --max-logprobs)", name)
    return k, echo


def parse_sampling(body: dict, g: Generator, default_max: int, chat: bool, max_logprobs: int = MAX_LOGPROBS) -> dict:
    num = (int, float)
    n = _get(body, "n", (int,), 1)
    if not 1 <= n <= MAX_N:
        raise BadRequest(f"'n'={n}: must be between 1 and {MAX_N}", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if _get(body, name, num, 0) != 0:
            raise BadRequest(f"'{name}' is not supported (use repetition_penalty)", name)
    for name in ("tools", "functions", "best_of"):
        if body.get(name) not in (None, False, 0, 1 if name == "best_of" else None):
            raise BadRequest(f"'{name}' is not supported by this server", name)
    logprobs, echo = parse_logprobs(body, chat, max_logprobs)
    max_key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _get(body, max_key, (int,), default_max)
    if max_tokens < (0 if echo else 1):
        raise BadRequest(f"'{max_key}'={max_tokens}: must be >= 1 (0 only with echo: score the prompt)", max_key)
    kw = dict(max_new_tokens=max_tokens,
              temperature=_get(body, "temperature", num, 1.0), top_p=_get(body, "top_p", num, 1.0),
              top_k=_get(body, "top_k", (int,), 0), min_p=_get(body, "min_p", num, 0.0),
              repetition_penalty=_get(body, "repetition_penalty", num, 1.0),
              ignore_eos=_get(body, "ignore_eos", (bool,), False))
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 16:
            raise BadRequest("'stop': expected a non-empty string or a list of up to 16 non-empty strings", "stop")
        kw["stop"] = stop
    stop_ids = _get(body, "stop_token_ids", (list,), None)
    if stop_ids is not None:
        V = g.cfg.vocab_size
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in stop_ids):
            raise BadRequest(f"'stop_token_ids': expected token ids in [0, {V})", "stop_token_ids")
        kw["stop_token_ids"] = stop_ids
    seed = _get(body, "seed", (int,), None)
    if seed is not None and not 0 <= seed < 2**63:
        raise BadRequest(f"'seed'={seed}: must be in [0, 2**63)", "seed")
    return dict(kw=kw, n=n, seed=seed, stream=_get(body, "stream", (bool,), False), logprobs=logprobs, echo=echo)


def build_jobs(g: Generator, prompts: list, sp: dict, out: queue.Queue) -> list[Job]:
    jobs = []
    base_seed = sp["seed"] if sp["seed"] is not None else int(np.random.default_rng().integers(0, 2**31))
    for pi, prompt in enumerate(prompts):
        for j in range(sp["n"]):
            try:
                if sp["kw"]["max_new_tokens"] == 0:  # echo only: the prompt is scored, nothing is generated
                    g.fit_context(g.encode_prompt(prompt), 1)
                    continue
                req = g.make_request(prompt, seed=(base_seed + j) % 2**63, **sp["kw"])
            except PromptTooLongError as e:
                raise BadRequest(str(e), "messages" if _is_chat(prompt) else "prompt", "context_length_exceeded")
            except SamplingError as e:
                raise BadRequest(str(e), str(e).split("=")[0])
            except ValueError as e:
                raise BadRequest(str(e), getattr(e, "param", None))
            jobs.append(Job(req, pi * sp["n"] + j, out, prompt_index=pi, logprobs=sp["logprobs"]))
    return jobs


def _is_chat(p) -> bool:
    return isinstance(p, list) and bool(p) and isinstance(p[0], dict)


# ---------------------------------------------------------------- HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "jaxlm"
    app: "App"  # set on the subclass made by make_server

    def log_message(self, fmt, *args):  # quiet by default
        if self.app.verbose:
            super().log_message(fmt, *args)

    # -- plumbing
    def _send_json(self, status: int, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param=None, code=None, etype="invalid_request_error"):
        self._send_json(status, {"error": {"message": message, "type": etype, "param": param, "code": code}})

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON: {e}")
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    # -- routes
    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [self.app.model_card()]})
        elif path == "/v1/models/" + self.app.model_name:
            self._send_json(200, self.app.model_card())
        elif path in ("/health", ""):
            self._send_json(200, {"status": "ok", "active_rows": len(self.app.worker.live)})
        elif path in ("/tokenizer_info", "/v1/tokenizer_info"):
            self._send_json(200, self.app.tokenizer_info())
        else:
            self._error(404, f"no route GET {path}", code="not_found")

    def do_POST(self):
        path = self.path.split("?")[0].rstrip("/")
        try:
            tokenizer_route = path.removeprefix("/v1") in ("/tokenize", "/detokenize")
            if path not in ("/v1/completions", "/v1/chat/completions") and not tokenizer_route:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return self._error(404, f"no route POST {path}", code="not_found")
            body = self._body()
            if tokenizer_route:
                return self._send_json(200, self.app.tokenize(body) if path.endswith("/tokenize")
                                       else self.app.detokenize(body))
            self._complete(body, path.endswith("chat/completions"))
        except BadRequest as e:
            self._error(400, str(e), e.param, e.code)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            try:
                self._error(500, f"{type(e).__name__}: {e}", etype="server_error")
            except OSError:
                pass

    def _complete(self, body: dict, chat: bool):
        g, app = self.app.generator, self.app
        if chat:
            try:
                prompts = [validate_messages(body.get("messages"))]
            except ValueError as e:
                raise BadRequest(str(e), "messages")
        else:
            p = body.get("prompt")
            ids = lambda x: isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool)  # noqa: E731
                                                              for t in x)
            if isinstance(p, str) or ids(p):
                prompts = [p]
            elif isinstance(p, list) and p and (all(isinstance(x, str) for x in p) or all(ids(x) for x in p)):
                prompts = list(p)
            else:
                raise BadRequest("'prompt': expected a string, a list of strings, a list of token ids or a list of "
                                 "lists of token ids", "prompt")
        sp = parse_sampling(body, g, app.default_max_tokens if chat else 16, chat, app.max_logprobs)
        out: queue.Queue = queue.Queue()
        jobs = build_jobs(g, prompts, sp, out)
        echo = app.echo_logprobs(prompts, sp) if sp["echo"] else None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        app.worker.submit(jobs)
        try:
            if sp["stream"]:
                self._stream(rid, chat, jobs, out, sp, echo)
            else:
                self._collect(rid, chat, jobs, out, sp, prompts, echo)
        finally:
            for j in jobs:  # a client gone mid-stream (or any failure here) releases its rows
                if not j.req.done:
                    j.cancelled.set()

    @staticmethod
    def _usage(jobs, prompt_lens=None):
        prompts = {j.prompt_index: len(j.req.prompt) for j in jobs}  # n choices of one prompt count it once
        prompts.update(prompt_lens or {})
        done = sum(len(j.req.tokens) for j in jobs)
        return {"prompt_tokens": sum(prompts.values()), "completion_tokens": done,
                "total_tokens": sum(prompts.values()) + done}

    def _wait(self, jobs, out):
        """Yield (index, Event, logprob info) until every job is done."""
        remaining = len(jobs)
        while remaining:
            idx, ev, info = out.get()
            if ev is _DONE:
                remaining -= 1
                if jobs[idx].error:
                    raise RuntimeError(jobs[idx].error)
                continue
            yield idx, ev, info

    def _collect(self, rid, chat, jobs, out, sp, prompts, echo):
        n = sp["n"]
        choices = {}
        if not jobs:  # max_tokens=0 with echo: one choice per prompt (and n), the prompt only
            for pi in range(len(prompts)):
                for j in range(n):
                    choices[pi * n + j] = {"index": pi * n + j, "text": echo[pi]["text"],
                                           "logprobs": self.app.completion_logprobs(echo[pi], []),
                                           "finish_reason": "length"}
            lens = {pi: len(e["ids"]) for pi, e in enumerate(echo)}
            return self._send_json(200, {"id": rid, "object": "text_completion", "created": int(time.time()),
                                         "model": self.app.model_name, "choices": [choices[i] for i in sorted(choices)],
                                         "usage": {"prompt_tokens": sum(lens.values()), "completion_tokens": 0,
                                                   "total_tokens": sum(lens.values())}})
        texts = [""] * len(jobs)
        infos: list[list] = [[] for _ in jobs]
        for idx, ev, info in self._wait(jobs, out):
            texts[idx] += ev.text
            if info is not None:
                infos[idx].append(info)
        for j in jobs:
            reason = j.req.finish_reason if j.req.finish_reason in ("stop", "length") else "stop"
            want = j.logprobs is not None
            if chat:
                choices[j.index] = {"index": j.index, "message": {"role": "assistant", "content": texts[j.index]},
                                    "logprobs": self.app.chat_logprobs(infos[j.index]) if want else None,
                                    "finish_reason": reason}
            else:
                e = echo[j.prompt_index] if echo else None
                lp = self.app.completion_logprobs(e, infos[j.index]) if want else None
                choices[j.index] = {"index": j.index, "text": (e["text"] if e else "") + texts[j.index],
                                    "logprobs": lp, "finish_reason": reason}
        self._send_json(200, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                              "created": int(time.time()), "model": self.app.model_name,
                              "choices": [choices[i] for i in sorted(choices)], "usage": self._usage(jobs)})

    def _sse(self, obj):
        data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
        self.wfile.write(data)
        self.wfile.flush()

    def _stream(self, rid, chat, jobs, out, sp, echo):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        created, model = int(time.time()), self.app.model_name
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index, text=None, reason=None, role=False, lp=None):
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
                ch = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}
            else:
                ch = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": reason}
            return {"id": rid, "object": obj, "created": created, "model": model, "choices": [ch]}

        if chat:
            for j in jobs:
                self._sse(chunk(j.index, role=True))
        elif echo:
            for j in jobs:
                e = echo[j.prompt_index]
                self._sse(chunk(j.index, e["text"], lp=self.app.completion_logprobs(e, []) if j.logprobs is not None
                                else None))
        for idx, ev, info in self._wait(jobs, out):
            lp = None
            if info is not None:
                lp = self.app.chat_logprobs([info]) if chat else self.app.completion_logprobs(None, [info])
            if ev.text or lp is not None:
                self._sse(chunk(idx, ev.text, lp=lp))
            if ev.finish_reason:
                self._sse(chunk(idx, None, ev.finish_reason))
        self._sse(b"[DONE]")


class App:
    def __init__(self, generator: Generator, model_name: str, *, max_batch: int = 8, default_max_tokens: int = 256,
                 verbose: bool = False, max_logprobs: int = MAX_LOGPROBS):
        self.generator, self.model_name, self.verbose = generator, model_name, verbose
        self.default_max_tokens, self.max_logprobs = default_max_tokens, int(max_logprobs)
        self.worker = BatchWorker(generator, max_batch)
        self.created = int(time.time())
        self._scorer = None

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "jaxlm",
                "context_length": self.generator.context_len, "max_model_len": self.generator.context_len}

    # -- tokenizer endpoints (vLLM's)
    def _tok(self, what: str):
        tok = self.generator.tokenizer
        if tok is None:
            raise BadRequest(f"{what}: this server has no tokenizer (it was started with token ids only)")
        return tok

    def tokenize(self, body: dict) -> dict:
        """POST /tokenize {"prompt": str | "messages": [...], "add_special_tokens": bool} -> {"tokens", "count",
        "max_model_len", "token_strs"}."""
        tok = self._tok("/tokenize")
        add = _get(body, "add_special_tokens", (bool,), None)
        if body.get("messages") is not None:
            from jaxlm.infer.text import render_chat

            try:
                text = render_chat(tok, body["messages"])
            except ValueError as e:
                raise BadRequest(str(e), "messages")
            add = False if add is None else add
        else:
            text = _get(body, "prompt", (str,), None)
            if text is None:
                raise BadRequest("/tokenize: expected 'prompt' (a string) or 'messages'", "prompt")
        ids = list(tok.encode(text, add_bos=add))
        out = {"tokens": ids, "count": len(ids), "max_model_len": self.generator.context_len}
        if _get(body, "return_token_strs", (bool,), False):
            out["token_strs"] = [tok.id_to_token(i) for i in ids]
        return out

    def detokenize(self, body: dict) -> dict:
        """POST /detokenize {"tokens": [ids]} -> {"prompt": text}."""
        tok = self._tok("/detokenize")
        ids = body.get("tokens")
        V = self.generator.cfg.vocab_size
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V
                                                for t in ids):
            raise BadRequest(f"'tokens': expected a list of token ids in [0, {V})", "tokens")
        return {"prompt": tok.decode(ids)}

    def tokenizer_info(self) -> dict:
        """GET /tokenizer_info: the special tokens, chat template and sizes (vLLM's fields)."""
        tok = self.generator.tokenizer
        name = lambda i: None if i is None or tok is None else tok.id_to_token(int(i))  # noqa: E731
        return {"tokenizer_class": type(tok).__name__ if tok is not None else None,
                "eos_token": name(getattr(tok, "eos_id", None)), "bos_token": name(getattr(tok, "bos_id", None)),
                "pad_token": name(getattr(tok, "pad_id", None)),
                "eos_token_id": getattr(tok, "eos_id", None), "bos_token_id": getattr(tok, "bos_id", None),
                "chat_template": getattr(tok, "chat_template", None), "add_bos_token": bool(getattr(tok, "add_bos",
                                                                                                    False)),
                "model_max_length": self.generator.context_len, "vocab_size": self.generator.cfg.vocab_size}

    # -- logprobs
    def _token_str(self, i: int) -> str:
        tok = self.generator.tokenizer
        return tok.decode([int(i)]) if tok is not None else str(int(i))

    def echo_logprobs(self, prompts, sp) -> list[dict]:
        """Per prompt: its ids, text, and the logprob (and top k) of every prompt token after the first."""
        from jaxlm.errors import PromptTooLongError as TooLong, RequestError
        from jaxlm.infer.logprobs import Scorer

        g = self.generator
        if self._scorer is None:
            self._scorer = Scorer(graphdef=g.graphdef, state=g.state, cfg=g.cfg, mesh=g.mesh,
                                  context_len=g.context_len)
        ids = [g.encode_prompt(p) for p in prompts]
        k = sp["logprobs"] or 0
        scored = [i for i, x in enumerate(ids) if len(x) >= 2 and sp["logprobs"] is not None]
        try:
            res = dict(zip(scored, self._scorer.score([ids[i] for i in scored], top_k=max(k, 1))))
        except TooLong as e:
            raise BadRequest(str(e), "prompt", "context_length_exceeded")
        except RequestError as e:
            raise BadRequest(str(e), "prompt")
        out = []
        for i, (p, x) in enumerate(zip(prompts, ids)):
            text = p if isinstance(p, str) else (g.tokenizer.decode(x) if g.tokenizer is not None else "")
            entries = [(x[0], None, None)] if x else []
            if i in res:
                r = res[i]
                for t in range(1, len(x)):
                    top = [(int(a), float(b)) for a, b in zip(r.top_ids[t - 1][:k], r.top_logprobs[t - 1][:k])]
                    entries.append((x[t], float(r.logprobs[t - 1]), top))
            out.append({"ids": x, "text": text, "entries": entries})
        return out

    def completion_logprobs(self, echo: dict | None, infos: list) -> dict:
        """The completions `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset."""
        entries = list(echo["entries"] if echo else []) + [(t, lp, top) for t, lp, top in infos]
        tokens, lps, tops, offs = [], [], [], []
        pos = 0
        for t, lp, top in entries:
            s = self._token_str(t)
            tokens.append(s)
            lps.append(lp)
            offs.append(pos)
            pos += len(s)
            if lp is None:
                tops.append(None)
                continue
            d = {self._token_str(a): b for a, b in top}
            d.setdefault(s, lp)  # the chosen token is always listed (as vLLM does)
            tops.append(d)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}

    def chat_logprobs(self, infos: list) -> dict:
        def item(t, lp):
            s = self._token_str(t)
            return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

        return {"content": [{**item(t, lp), "top_logprobs": [item(a, b) for a, b in top]} for t, lp, top in infos]}


def make_server(generator: Generator, host: str = "127.0.0.1", port: int = 8000, *, model_name: str = "jaxlm",
                max_batch: int = 8, default_max_tokens: int = 256, verbose: bool = False,
                max_logprobs: int = MAX_LOGPROBS) -> ThreadingHTTPServer:
    """A ready server (worker thread started); call `serve_forever()` and, when done, `shutdown_all(server)`.
    max_logprobs: the most alternatives per token a request may ask for (more answers 400)."""
    app = App(generator, model_name, max_batch=max_batch, default_max_tokens=default_max_tokens, verbose=verbose,
              max_logprobs=max_logprobs)
    handler = type("JaxlmHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.app = app
    app.worker.start()
    return server


def shutdown_all(server: ThreadingHTTPServer):
    server.shutdown()
    server.server_close()
    server.app.worker.shutdown()
