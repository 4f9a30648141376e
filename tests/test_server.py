"""The OpenAI-compatible server on loopback, driven by the official `openai` client (and raw HTTP for the
malformed-body and disconnect cases)."""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest

from jaxlm.infer.generate import Generator
from jaxlm.infer.server import make_server, shutdown_all
from jaxlm.infer.text import ByteTokenizer


class Latin1(ByteTokenizer):
    def decode(self, ids):
        return bytes(int(i) for i in ids).decode("latin-1")


@pytest.fixture(scope="module")
def served(tiny_byte_lm):
    g = Generator(tiny_byte_lm, Latin1(), eos_ids=[])  # context 512, byte vocabulary
    server = make_server(g, "127.0.0.1", 0, model_name="tiny", max_batch=4)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    yield g, server, client, port
    shutdown_all(server)


def solo(g, prompt, n):
    return g.generate(prompt, max_new_tokens=n)[0]


def test_models_and_completions(served):
    g, _, client, _ = served
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0)
    assert r.choices[0].text == solo(g, "hello", 12)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 12)
    # a list of prompts: one choice each, in order
    # (prompt + max_tokens of every request in this file fit the 32-position cache bucket where they can:
    # fewer distinct shapes, fewer compiles)
    r2 = client.completions.create(model="tiny", prompt=["hello", "abcdefgh"], max_tokens=12, temperature=0)
    assert [c.text for c in r2.choices] == [solo(g, "hello", 12), solo(g, "abcdefgh", 12)]


def test_chat_and_streaming(served):
    g, _, client, _ = served
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    want = g.generate([msgs], max_new_tokens=12)[0]
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "length" and len(chunks) >= 4
    parts = list(client.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == solo(g, "hello", 12)
    # a stop string ends the text before it
    full = solo(g, "hello", 12)
    r = client.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0, stop=[full[4:6]])
    assert r.choices[0].text == full[:full.index(full[4:6])] and r.choices[0].finish_reason == "stop"
    # a stop token (extension field) ends the stream with finish_reason "stop"; the token is not in the text
    ids = g.generate_ids([list(b"hello")], max_new_tokens=12)[0]
    parts = list(client.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0, stream=True,
                                           extra_body={"stop_token_ids": [ids[3]]}))
    assert "".join(p.choices[0].text for p in parts) == Latin1().decode(ids[:ids.index(ids[3])])
    assert parts[-1].choices[0].finish_reason == "stop"
    # seeded sampling repeats itself; n=2 samples choice i with seed + i
    kw = dict(model="tiny", prompt="hello", max_tokens=12, temperature=1.0, extra_body={"top_k": 20})
    two = client.completions.create(n=2, seed=5, **kw)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.prompt_tokens == 5
    assert two.choices[0].text == client.completions.create(seed=5, **kw).choices[0].text
    assert two.choices[1].text == client.completions.create(seed=6, **kw).choices[0].text


def test_concurrent_requests_do_not_mix(served):
    g, server, client, _ = served
    prompts = ["alpha", "b", "gamma ray", "dd", "epsilon x", "zeta"]
    lens = [12, 20, 16, 18, 14, 13]
    want = [solo(g, p, n) for p, n in zip(prompts, lens)]
    got = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def call(i):
        start.wait()
        got[i] = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=lens[i],
                                           temperature=0).choices[0].text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want
    assert server.app.worker.max_live >= 2  # requests really shared decode steps


def _raw_stream_then_drop(port, body):
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    buf = b""
    while buf.count(b"data: ") < 3:  # a few tokens have arrived: generation is under way
        buf += s.recv(4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset on close
    s.close()


def test_client_disconnect_mid_stream(served):
    g, server, client, port = served
    worker = server.app.worker
    want = solo(g, "steady", 24)
    before = len(worker.log)
    result = {}
    other = threading.Thread(target=lambda: result.update(
        text=client.completions.create(model="tiny", prompt="steady", max_tokens=24, temperature=0).choices[0].text))
    other.start()
    _raw_stream_then_drop(port, {"prompt": "going away", "max_tokens": 450, "temperature": 0, "stream": True})
    other.join()
    assert result["text"] == want
    deadline = time.time() + 60
    while time.time() < deadline and not any(r == "cancelled" for r, _ in worker.log[before:]):
        time.sleep(0.05)
    cancelled = [n for r, n in worker.log[before:] if r == "cancelled"]
    assert cancelled and cancelled[0] < 450  # the dropped stream stopped early and released its row
    assert client.completions.create(model="tiny", prompt="hello", max_tokens=12,
                                     temperature=0).choices[0].text == solo(g, "hello", 12)


@pytest.mark.parametrize("kw, field", [
    (dict(temperature=-1), "temperature"), (dict(top_p=1.5), "top_p"), (dict(max_tokens=0), "max_tokens"),
    (dict(n=0), "n"), (dict(presence_penalty=0.5), "presence_penalty"), (dict(stop=[""]), "stop"),
    (dict(extra_body={"top_k": -3}), "top_k"), (dict(extra_body={"repetition_penalty": 0}), "repetition_penalty"),
    (dict(temperature="hot"), "temperature"), (dict(logprobs=50), "logprobs"),
    (dict(extra_body={"stop_token_ids": [99999]}), "stop_token_ids"),
])
def test_invalid_parameters_are_400(served, kw, field):
    _, _, client, _ = served
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hello", **{"max_tokens": 4, **kw})
    assert e.value.status_code == 400 and field in e.value.message


def test_bad_bodies_and_long_prompts_are_400(served):
    _, _, client, port = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        err = json.loads(resp.read())["error"]
        assert resp.status == 400 and ("JSON" in err["message"])
    conn.request("GET", "/v1/nothing")
    resp = conn.getresponse()
    assert resp.status == 404 and resp.read()
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[{"content": "no role"}], max_tokens=4)
    with pytest.raises(openai.BadRequestError) as e:  # 600 prompt tokens + 4 > the 512-token context
        client.completions.create(model="tiny", prompt="x" * 600, max_tokens=4, temperature=0)
    assert "context length is 512" in e.value.message and e.value.code == "context_length_exceeded"


@pytest.mark.slow  # loads SmolLM2 in a subprocess (~30 s); the tiny-model tests above cover the server logic
def test_cli_serves_smollm2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.Popen([sys.executable, "-m", "jaxlm.serve", "--port", str(port), "--max-batch", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        while line and "serving" not in line:
            line = proc.stdout.readline()
        assert "serving SmolLM2-135M-Instruct" in line
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
        r = client.chat.completions.create(model="SmolLM2-135M-Instruct", temperature=0, max_tokens=20,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    finally:
        proc.terminate()
        proc.wait(30)
