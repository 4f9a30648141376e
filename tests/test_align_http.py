"""The OpenAI-compatible HTTP backend against a fault-injecting server on loopback (127.0.0.1 only): 429, 500,
malformed bodies and stalls are retried with backoff and no answer is lost; exhausted retries and 4xx raise LLMError;
the response cache makes repeats free; token/cost accounting per role; the API key never reaches logs or caches."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jaxlm.align.llm import HTTPLLM, Cached, Ledger, LLMError, Metered, ResponseCache

SECRET = "sk-test-Zq81SECRETkey0042"
MAX_REQUESTS = 200  # the server refuses (400) beyond this: a runaway client cannot loop forever


class FaultServer:
    """Per-prompt fault plans: plan[prompt] = list of faults for the first attempts ('429', '500', 'malformed',
    'stall', 'no_choices', '401'); later attempts succeed with text 'echo:<prompt>' (and usage 7/3 tokens)."""

    def __init__(self, plan, stall_s=6.0):
        self.plan, self.stall_s = plan, stall_s
        self.attempts: dict[str, int] = {}
        self.auth: list[str | None] = []
        self.paths: list[str] = []
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def _send(self, code, body: bytes, headers=()):
                try:
                    self.send_response(code)
                    for k, v in headers:
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
                with server.lock:
                    server.auth.append(self.headers.get("Authorization"))
                    server.paths.append(self.path)
                    server.bodies.append(body)
                    n = server.attempts.get(prompt, 0)
                    server.attempts[prompt] = n + 1
                    total = sum(server.attempts.values())
                if total > MAX_REQUESTS:
                    return self._send(400, b'{"error": "too many requests in this test"}')
                faults = server.plan.get(prompt, [])
                fault = faults[n] if n < len(faults) else faults[-1] if faults and faults[-1] == "always500" else None
                if fault == "429":
                    return self._send(429, b'{"error": "slow down"}', [("Retry-After", "0")])
                if fault in ("500", "always500"):
                    return self._send(500, b'{"error": "boom"}')
                if fault == "401":
                    return self._send(401, b'{"error": "bad key"}')
                if fault == "malformed":
                    return self._send(200, b'{"choices": [{"message": {"content": "half')
                if fault == "no_choices":
                    return self._send(200, b'{"object": "chat.completion"}')
                if fault == "stall":
                    time.sleep(server.stall_s)
                text = f"echo:{prompt}"
                choice = {"message": {"role": "assistant", "content": text}} if "messages" in body else {"text": text}
                out = {"choices": [choice], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
                self._send(200, json.dumps(out).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


def client(url, **kw):
    # timeout 2 s against a 6 s stall: only the planned stall times out, never a normal reply on a loaded machine
    kw = {"api_key_env": "JAXLM_TEST_KEY", "concurrency": 3, "timeout": 2.0, "max_retries": 4, "backoff": 0.01,
          "max_backoff": 0.05, **kw}
    return HTTPLLM(url, "test-model", **kw)


def test_faults_are_retried_and_nothing_is_lost(monkeypatch):
    monkeypatch.setenv("JAXLM_TEST_KEY", SECRET)
    plan = {"p0": ["429"], "p1": ["500", "500"], "p2": ["malformed"], "p3": ["stall"], "p4": [],
            "p5": ["no_choices", "429", "500"]}
    with FaultServer(plan) as srv:
        llm = client(srv.url)
        t0 = time.time()
        out = llm.generate([f"p{i}" for i in range(6)], max_tokens=5, temperature=0.2, top_p=0.9, seed=[1, 2, 3, 4,
                                                                                                             5, 6])
        assert time.time() - t0 < 60  # no hang (the one stall costs one 2 s timeout)
    assert [c.text for c in out] == [f"echo:p{i}" for i in range(6)]
    assert all(c.prompt_tokens == 7 and c.completion_tokens == 3 for c in out)
    assert srv.attempts == {"p0": 2, "p1": 3, "p2": 2, "p3": 2, "p4": 1, "p5": 4}
    s = llm.stats
    assert (s["http_429"], s["http_5xx"], s["malformed"], s["timeouts"]) == (2, 3, 2, 1)
    assert s["retries"] == 8 and s["requests"] == 14
    assert set(srv.auth) == {f"Bearer {SECRET}"} and set(srv.paths) == {"/v1/chat/completions"}
    b = next(b for b in srv.bodies if b["messages"][0]["content"] == "p3")
    assert (b["model"], b["max_tokens"], b["temperature"], b["top_p"], b["seed"]) == ("test-model", 5, 0.2, 0.9, 4)


def test_exhausted_retries_and_client_errors_raise(monkeypatch):
    monkeypatch.delenv("JAXLM_TEST_KEY", raising=False)
    with FaultServer({"dead": ["always500"], "denied": ["401"]}) as srv:
        llm = client(srv.url, max_retries=2)
        with pytest.raises(LLMError, match="giving up after 3 attempts"):
            llm.generate(["dead"])
        assert srv.attempts["dead"] == 3
        with pytest.raises(LLMError, match="HTTP 401"):
            llm.generate(["denied"])
        assert srv.attempts["denied"] == 1  # a client error is not retried
        assert srv.auth[0] is None  # no key in the environment: no Authorization header


def test_completions_api_and_local_stop_cut():
    with FaultServer({}) as srv:
        llm = client(srv.url, api="completions", api_key_env=None)
        out = llm.generate(["raw prompt"], stop=[":raw"])
        assert out[0].text == "echo"  # the server ignored stop; the client cut at it
        assert srv.paths == ["/v1/completions"] and srv.bodies[0]["stop"] == [":raw"]
        with pytest.raises(ValueError, match="string prompts"):
            llm.generate([[{"role": "user", "content": "x"}]])


def test_cache_accounting_and_key_hygiene(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JAXLM_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    cache_path = tmp_path / "responses.sqlite"
    ledger = Ledger(prices={"judge": (1000.0, 2000.0)})
    with FaultServer({"a": ["429", "500"], "b": ["stall"]}) as srv:
        raw = client(srv.url)
        judge = Metered(Cached(raw, ResponseCache(cache_path)), "judge", ledger)
        first = judge.generate(["a", "b", "c"], seed=0)
        n = sum(srv.attempts.values())
        again = judge.generate(["c", "a", "b"], seed=0)
        assert sum(srv.attempts.values()) == n  # all served from the cache
        assert [c.text for c in again] == ["echo:c", "echo:a", "echo:b"] and all(c.cached for c in again)
        # any sampling parameter is part of the key
        judge.generate(["a"], seed=1)
        judge.generate(["a"], seed=0, temperature=0.5)
        assert sum(srv.attempts.values()) == n + 2
    assert [c.text for c in first] == ["echo:a", "echo:b", "echo:c"]
    u = ledger.summary()["judge"]
    assert (u["calls"], u["cache_hits"], u["prompt_tokens"], u["completion_tokens"]) == (5, 3, 35, 15)
    assert u["cost"] == pytest.approx((35 * 1000.0 + 15 * 2000.0) / 1e6)
    assert "retrying" in caplog.text  # retries were logged ...
    assert SECRET not in caplog.text  # ... without the key
    assert SECRET not in repr(raw) and SECRET not in str(vars(raw))
    assert SECRET.encode() not in cache_path.read_bytes()
    assert not any(SECRET.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_budget_stops_new_requests():
    from jaxlm.align.llm import ScriptedLLM

    ledger = Ledger(prices={"opt": (1e6, 0.0)}, budget=2.5)  # $1 per prompt token
    opt = Metered(ScriptedLLM(default="ok"), "opt", ledger)
    opt.generate(["abcd"])  # 1 token: $1
    opt.generate(["abcd", "efgh"])  # $3 in total: over budget after this batch
    with pytest.raises(LLMError, match="budget"):
        opt.generate(["abcd"])
    assert ledger.total_cost == 3.0 and opt.inner.calls == 3
