"""Inference: caches, sampling, batched generation and the OpenAI-compatible server (docs/inference.md)."""
from jaxlm.infer.generate import DecodeBatch, Event, Generator, PromptTooLongError, load_model  # noqa: F401
from jaxlm.infer.sampling import SamplingError, SamplingParams  # noqa: F401
