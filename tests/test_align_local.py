"""The local jaxlm backend (LocalLLM over jaxlm.infer.Generator) on a tiny random model with a byte tokenizer:
batching/ordering, token counts, answers streamed into the cache, assistant-prefix prefill. Greedy only and
2-row batches, so few shapes are compiled."""

import pytest

from jaxlm.align.llm import Cached, ResponseCache, ask, prefilled


@pytest.fixture(scope="module")
def local(tiny_byte_lm):
    from jaxlm.align.local import LocalLLM
    from jaxlm.infer.generate import Generator
    from jaxlm.infer.text import ByteTokenizer

    return LocalLLM(Generator(tiny_byte_lm, ByteTokenizer()), name="tiny", batch_size=2)


def test_local_backend(local, tmp_path):
    from jaxlm.infer.text import plain_chat_prompt

    prompts = ["a longer prompt", "hi", "mid length", "abc"]
    seen = []
    # max_tokens=16: prompt + answer fit the 32-position cache bucket that test_server compiles too
    out = local.generate(prompts, max_tokens=16, on_result=lambda i, c: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3]  # every answer reported as its batch finishes (the cache keeps it)
    assert [c.prompt_tokens for c in out] == [len(p.encode()) for p in prompts]
    assert all(1 <= c.completion_tokens <= 16 for c in out)
    # batches are formed by prompt length; answers do not depend on which prompts share a batch
    again = local.generate(prompts[::-1], max_tokens=16)
    assert [c.text for c in again] == [c.text for c in out][::-1]

    # prefill: chat-rendered user turn + the forced start of the answer, continued by the model
    msgs = prefilled("rate it", '{"s": ')
    raw = plain_chat_prompt([{"role": "user", "content": "rate it"}]) + '{"s": '
    got, want = local.generate([msgs, raw], max_tokens=4)
    assert got.text == want.text
    cached = Cached(local, ResponseCache(tmp_path / "c.sqlite"))
    assert cached.supports_prefill
    full = ask(cached, ["rate it", "rate it"], ['{"s": '] * 2, prefill=True, max_tokens=4)
    assert full[0].text == '{"s": ' + want.text


def test_http_client_against_jaxlm_server(local):
    """HTTPLLM talking to jaxlm's own OpenAI-compatible server (loopback) gives the local backend's greedy text."""
    import threading

    from jaxlm.align.llm import HTTPLLM
    from jaxlm.infer.server import make_server, shutdown_all

    srv = make_server(local.gen, "127.0.0.1", 0, model_name="tiny")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        raw = HTTPLLM(url, "tiny", api="completions", api_key_env=None, timeout=120, max_retries=0, concurrency=2)
        chat = HTTPLLM(url, "tiny", api="chat", api_key_env=None, timeout=120, max_retries=0, concurrency=2)
        prompts = ["hello", "abc"]
        want = [c.text for c in local.generate(prompts, max_tokens=16)]
        got = raw.generate(prompts, max_tokens=16)
        assert [c.text for c in got] == want and all(c.completion_tokens >= 1 for c in got)
        from jaxlm.infer.text import plain_chat_prompt
        want_chat = local.generate([plain_chat_prompt([{"role": "user", "content": "hello"}])], max_tokens=16)[0].text
        assert chat.generate(["hello"], max_tokens=16)[0].text == want_chat
    finally:
        shutdown_all(srv)
