"""Logprobs in the OpenAI-compatible server, with lm-evaluation-harness' `local-completions` as the client: a
loglikelihood task (tokenized and string requests, vLLM's tokenizer endpoints) gives the same scores as the native
`jaxlm` model, a generation task runs, and bad requests are 400s naming the field."""

import json
import threading

import numpy as np
import pytest
import requests
from flax import nnx

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402

from jaxlm.config import preset  # noqa: E402
from jaxlm.eval import JaxlmLM, task_manager  # noqa: E402
from jaxlm.infer.generate import Generator  # noqa: E402
from jaxlm.infer.server import make_server, shutdown_all  # noqa: E402
from jaxlm.models.decoder import DecoderLM  # noqa: E402


@pytest.fixture(scope="module")
def served():
    from jaxlm.data import default_tokenizer
    from jaxlm.io.tokenizer import HFTokenizer

    d = default_tokenizer()
    tok = HFTokenizer(d.tk, eos_id=d.eos_id, name="jaxlm-bpe", parse_special=True)
    model = DecoderLM(preset("smollm2-tiny", vocab_size=1024, init_std=0.1), rngs=nnx.Rngs(5))
    g = Generator(model, tok)
    server = make_server(g, "127.0.0.1", 0, model_name="tiny", max_batch=4)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield model, tok, f"http://127.0.0.1:{server.server_address[1]}"
    shutdown_all(server)


def _samples(res, task):
    return sorted(res["samples"][task], key=lambda s: s["doc_id"])


def test_local_completions_loglikelihood_matches_native(served):
    model, tok, url = served
    tm = task_manager(tasks=["jaxlm_heldout_cloze"])
    native = lm_eval.simple_evaluate(model=JaxlmLM(model=model, tokenizer=tok), tasks=["jaxlm_heldout_cloze"],
                                     limit=2, task_manager=tm, log_samples=True)
    want = [[r[0][0] for r in s["resps"]] for s in _samples(native, "jaxlm_heldout_cloze")]
    for tokenized in (True, False):
        res = lm_eval.simple_evaluate(
            model="local-completions", task_manager=tm, tasks=["jaxlm_heldout_cloze"], limit=2, log_samples=True,
            model_args=dict(model="tiny", base_url=f"{url}/v1/completions", tokenizer_backend="remote",
                            tokenized_requests=tokenized, max_retries=1, num_concurrent=1))
        got = [[r[0][0] for r in s["resps"]] for s in _samples(res, "jaxlm_heldout_cloze")]
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert res["results"]["jaxlm_heldout_cloze"]["acc,none"] == native["results"]["jaxlm_heldout_cloze"]["acc,none"]


def test_local_completions_generation(served):
    _, _, url = served
    res = lm_eval.simple_evaluate(
        model="local-completions", task_manager=task_manager(tasks=["jaxlm_code_exec"]), tasks=["jaxlm_code_exec"],
        limit=1,
        gen_kwargs="max_gen_toks=4,do_sample=False,temperature=0", confirm_run_unsafe_code=True, log_samples=True,
        model_args=dict(model="tiny", base_url=f"{url}/v1/completions", tokenizer_backend="remote",
                        tokenized_requests=False, max_retries=1))
    (sample,) = res["samples"]["jaxlm_code_exec"]
    (gens,) = sample["resps"]  # the 4 repeats of the one problem
    assert len(gens) == 4 and all(isinstance(r, str) and r for r in gens)
    assert res["results"]["jaxlm_code_exec"]["pass@1,samples"] == 0.0


def test_logprobs_shapes_and_errors(served):
    model, tok, url = served
    ids = tok.encode("def add(a, b):")
    r = requests.post(f"{url}/v1/completions", json={"prompt": ids, "max_tokens": 2, "logprobs": 3, "echo": True,
                                                     "temperature": 0}).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 2 and lp["token_logprobs"][0] is None
    assert all(len(t) >= 3 for t in lp["top_logprobs"][1:])
    # the prompt's logprobs are the model's own (full forward of the prompt)
    from jaxlm.infer.logprobs import Scorer
    want = Scorer(model).score([ids])[0].logprobs
    np.testing.assert_allclose(lp["token_logprobs"][1:len(ids)], want, atol=1e-5)
    chat = requests.post(f"{url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": True, "top_logprobs": 2,
        "temperature": 0}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 2 and all(len(c["top_logprobs"]) == 2 for c in content)
    assert content[0]["logprob"] == pytest.approx(content[0]["top_logprobs"][0]["logprob"])  # greedy = top-1
    stream = requests.post(f"{url}/v1/chat/completions", stream=True, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": True, "temperature": 0,
        "stream": True})
    chunks = [json.loads(x[6:]) for x in stream.iter_lines() if x.startswith(b"data: {")]
    streamed = [c["logprobs"]["content"][0] for ch in chunks for c in ch["choices"] if c["logprobs"]]
    assert [x["logprob"] for x in streamed] == pytest.approx([c["logprob"] for c in content])
    assert requests.post(f"{url}/tokenize", json={"prompt": "def add"}).json()["tokens"] == tok.encode("def add")
    assert requests.post(f"{url}/detokenize", json={"tokens": tok.encode("x = 1")}).json()["prompt"] == "x = 1"
    assert requests.get(f"{url}/tokenizer_info").json()["eos_token"] == "<|endoftext|>"
    for body, field in (({"prompt": "x", "logprobs": 21}, "logprobs"),
                        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 99},
                         "top_logprobs"),
                        ({"prompt": "x" * 3000, "max_tokens": 0, "logprobs": 1, "echo": True}, "prompt")):
        route = "chat/completions" if "messages" in body else "completions"
        resp = requests.post(f"{url}/v1/{route}", json=body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == field, resp.text
