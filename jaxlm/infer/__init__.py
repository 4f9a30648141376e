"""Inference: caches, sampling, batched generation and the OpenAI-compatible server (docs/inference.md)."""
from jaxlm.infer.generate import DecodeBatch, Event, Generator, PromptTooLongError  # noqa: F401
from jaxlm.infer.sampling import SamplingError, SamplingParams  # noqa: F401
