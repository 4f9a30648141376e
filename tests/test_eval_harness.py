"""The lm-evaluation-harness model `jaxlm`: loglikelihoods equal a direct computation from the logits (decoder,
Mamba-2, Phi-Mamba) and transformers' own; the harness CLI runs a loglikelihood and a generation task on the
offline tasks, resumes from its request cache, and bad input gives clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("lm_eval")

from jaxlm.config import preset  # noqa: E402
from jaxlm.errors import CheckpointNotFoundError, DataFileNotFoundError, PromptTooLongError  # noqa: E402
from jaxlm.eval import JaxlmLM, task_manager  # noqa: E402
from jaxlm.eval import cli  # noqa: E402

PAIRS = [([5, 9, 11], [7, 3, 2]), ([4] * 5, [8]), ([1, 2], [3, 4, 5, 6]), ([9], [9] * 5)]  # 6 tokens each


def direct(model, pairs):
    """Each sequence alone, unpadded, through the model's own call."""
    gd, st = nnx.split(model)
    fwd = jax.jit(lambda s, ids: jax.nn.log_softmax(nnx.merge(gd, s)(ids)[0].astype(jnp.float32), -1))
    out = []
    for ctx, cont in pairs:
        logp = fwd(st, jnp.asarray([ctx + cont], jnp.int32))
        t = np.arange(len(ctx), len(ctx) + len(cont))
        lp = np.asarray(logp)[t - 1, np.asarray(cont)]
        greedy = bool(np.all(np.asarray(logp).argmax(-1)[t - 1] == np.asarray(cont)))
        out.append((float(lp.sum()), greedy))
    return out


@pytest.fixture(scope="module")
def bpe():
    from jaxlm.data import default_tokenizer
    from jaxlm.io.tokenizer import HFTokenizer

    d = default_tokenizer()
    return HFTokenizer(d.tk, eos_id=d.eos_id, name="jaxlm-bpe", parse_special=True)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, bpe):
    """A tiny random Llama (SmolLM2 layout) saved as an HF directory with the embedded-corpus BPE."""
    from jaxlm.io.hf import save_pretrained
    from jaxlm.models.decoder import DecoderLM

    model = DecoderLM(preset("smollm2-tiny", vocab_size=1024, init_std=0.1), rngs=nnx.Rngs(3))
    return save_pretrained(model, tmp_path_factory.mktemp("tiny_llama"), tokenizer=bpe)


@pytest.mark.parametrize("family", ["decoder", "mamba2", "phi_mamba"])
def test_loglikelihood_equals_logits(family, bpe):
    """Loglikelihoods and greedy generations of each family, and (decoder) the same on a 4x2 mesh."""
    if family == "decoder":
        from jaxlm.models.decoder import DecoderLM
        model = DecoderLM(preset("smollm2-tiny", init_std=0.1), rngs=nnx.Rngs(0))
    elif family == "mamba2":
        from jaxlm.models.mamba2 import Mamba2LM
        model = Mamba2LM(preset("mamba2-tiny"), rngs=nnx.Rngs(0))
    else:
        from jaxlm.models.phi_mamba import PhiMambaLM
        model = PhiMambaLM(preset("phi-mamba-tiny"), rngs=nnx.Rngs(0))
    lm = JaxlmLM(model=model, tokenizer=bpe)
    got = lm._loglikelihood_tokens([(("", ""), c, x) for c, x in PAIRS])
    want = direct(model, PAIRS)
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-5, atol=1e-4)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert lm.scorer.shapes == {(4, 16, 0)}  # one forward: 4 rows of 5 fed tokens right-padded to the 16 bucket
    if family == "decoder":  # sharded: parameters by the logical rules on a 4x2 (fsdp x tensor) mesh, same scores
        sharded = JaxlmLM(model=model, tokenizer=bpe, mesh="4x2")
        assert dict(sharded.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
        np.testing.assert_allclose([g[0] for g in sharded._loglikelihood_tokens([(("", ""), c, x) for c, x in PAIRS])],
                                   [w[0] for w in want], rtol=1e-5, atol=1e-4)
    # generate_until: the decode cache (decoder, Mamba-2) or full forwards (Phi-Mamba has no cache) = the greedy
    # chain of full-forward argmaxes
    from jaxlm.infer.text import ByteTokenizer

    blm = JaxlmLM(model=model, tokenizer=ByteTokenizer())
    req = type("I", (), {"args": ("def f(x):", {"until": ["\x00\x00"], "max_gen_toks": 3, "do_sample": False})})()
    ids = blm.tok_encode("def f(x):")
    for _ in range(3):
        ids.append(int(np.argmax(blm.scorer.next_logits([ids])[0])))
    assert blm.generate_until([req]) == [ByteTokenizer().decode(ids[-3:])]


def test_loglikelihood_equals_transformers(hf_dir):
    import torch
    from transformers import LlamaForCausalLM

    lm = JaxlmLM(path=str(hf_dir))
    reqs = [("def add(a, b):", " return a + b"), ("The quick brown", " fox"), ("x", " = 1")]
    got = lm.loglikelihood([type("I", (), {"args": r})() for r in reqs], disable_tqdm=True)
    hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    for (ctx, cont), (lp, _) in zip(reqs, got):
        c, x = lm._encode_pair(ctx, cont)
        with torch.no_grad():
            logits = hf(torch.tensor([c + x])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        want = sum(float(logp[len(c) + i - 1, t]) for i, t in enumerate(x))
        assert abs(lp - want) < 1e-4, (ctx, lp, want)


def test_harness_cli_runs_tasks_and_resumes(hf_dir, tmp_path, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--model", "jaxlm", "--model_args", f"path={hf_dir}", "--tasks", "jaxlm_heldout_cloze,jaxlm_code_exec",
            "--limit", "2", "--gen_kwargs", "max_gen_toks=4,do_sample=False,temperature=0",  # greedy: cacheable
            "--confirm_run_unsafe_code", "--output_path",
            str(out), "--use_cache", str(cache), "--seed", "0"]
    assert cli.main(args) == 0
    res = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert 0.0 <= res["jaxlm_heldout_cloze"]["acc,none"] <= 1.0
    assert res["jaxlm_code_exec"]["pass@1,samples"] == 0.0  # a random model does not write working code
    # a crashed run resumes from the request cache: every request is answered without calling the model again

    def boom(*a, **k):
        raise AssertionError("the model was called although every request is cached")

    for name in ("_loglikelihood_tokens", "generate_until"):
        monkeypatch.setattr(JaxlmLM, name, boom)
    assert cli.main(args) == 0


def test_bad_input(hf_dir, tmp_path, bpe):
    import lm_eval

    with pytest.raises(CheckpointNotFoundError, match="nope"):
        JaxlmLM(path=str(tmp_path / "nope"))
    lm = JaxlmLM(path=str(hf_dir), context_len=32)
    with pytest.raises(PromptTooLongError, match="context length 32.*truncation=left"):
        lm._loglikelihood_tokens([(("", ""), [5] * 40, [6])])
    left = JaxlmLM(path=str(hf_dir), truncation="left", context_len=32)
    assert left._loglikelihood_tokens([(("", ""), [5] * 40, [6])]) == \
        left._loglikelihood_tokens([(("", ""), [5] * 32, [6])])  # 32 fed tokens + the scored one
    with pytest.raises(DataFileNotFoundError, match="missing.jsonl"):
        lm_eval.simple_evaluate(model=lm, tasks=["jaxlm_heldout_cloze"], limit=1,
                                task_manager=task_manager(metadata={"data_file": str(tmp_path / "missing.jsonl")},
                                                          tasks=["jaxlm_heldout_cloze"]))


def test_stock_lm_eval_console_script_runs_the_jaxlm_model(hf_dir, tmp_path):
    """`lm_eval --model jaxlm` itself (the harness' console script, in a fresh process) runs a loglikelihood and a
    generation task: scripts/setup.sh's .pth hook registers the model when the program is lm_eval."""
    import os
    import shutil
    import subprocess
    import sys

    from jaxlm.eval.offline import TASKS_DIR

    exe = shutil.which("lm_eval", path=os.path.dirname(sys.executable))
    assert exe, "the lm_eval console script is missing: run scripts/setup.sh (the eval extra)"
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([exe, "--model", "jaxlm", "--model_args", f"path={hf_dir}", "--tasks",
                        "jaxlm_heldout_cloze,jaxlm_code_exec", "--include_path", str(TASKS_DIR), "--limit", "1",
                        "--gen_kwargs", "max_gen_toks=4,do_sample=False,temperature=0", "--confirm_run_unsafe_code",
                        "--output_path", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert 0.0 <= res["jaxlm_heldout_cloze"]["acc,none"] <= 1.0 and "pass@1,samples" in res["jaxlm_code_exec"]
