"""One exception hierarchy: every jaxlm error is a JaxlmError (a ValueError), the old import paths name the same
classes, and representative bad inputs raise the right subclass with a message naming the field."""

import inspect

import pytest
from flax import nnx

import jaxlm
from jaxlm import errors

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == "jaxlm.errors"]


def test_every_class_is_a_jaxlm_error_and_exported():
    assert len(CLASSES) >= 14 and sorted(errors.__all__) == sorted(c.__name__ for c in CLASSES)
    for c in CLASSES:
        assert issubclass(c, errors.JaxlmError) and issubclass(c, ValueError), c
        assert getattr(jaxlm, c.__name__) is c  # `from jaxlm import SamplingError` works
    # catching code written for the old bases keeps working
    assert issubclass(errors.LLMError, RuntimeError)
    assert issubclass(errors.DataFileNotFoundError, FileNotFoundError)
    assert issubclass(errors.CheckpointNotFoundError, FileNotFoundError)
    for c in (errors.SamplingError, errors.PromptTooLongError, errors.BadRequest):
        assert issubclass(c, errors.RequestError)
    assert errors.BadRequest("bad", "top_p", "invalid").param == "top_p"


def test_old_import_paths_name_the_same_classes():
    from jaxlm.align.llm import LLMError
    from jaxlm.data.sources import DataError, DataFileNotFoundError
    from jaxlm.infer.generate import PromptTooLongError
    from jaxlm.infer.sampling import SamplingError
    from jaxlm.infer.server import BadRequest
    from jaxlm.io.load import CheckpointNotFoundError
    from jaxlm.train.loop import NonFiniteLossError

    assert (LLMError, DataError, DataFileNotFoundError, PromptTooLongError, SamplingError, BadRequest,
            CheckpointNotFoundError, NonFiniteLossError) == (
        errors.LLMError, errors.DataError, errors.DataFileNotFoundError, errors.PromptTooLongError,
        errors.SamplingError, errors.BadRequest, errors.CheckpointNotFoundError, errors.NonFiniteLossError)


def test_bad_inputs_name_the_field():
    from jaxlm.infer.generate import Generator
    from jaxlm.infer.sampling import SamplingParams
    from jaxlm.infer.text import normalize_stop, validate_messages
    from jaxlm.models import DecoderLM
    from jaxlm.sharding import parse_mesh

    with pytest.raises(errors.SamplingError, match=r"^temperature=-0.5: must be >= 0"):
        SamplingParams(temperature=-0.5)
    with pytest.raises(errors.SamplingError, match=r"^top_p=1.5"):
        SamplingParams(top_p=1.5)
    with pytest.raises(errors.ConfigError, match="unknown preset 'llama-9000'"):
        jaxlm.preset("llama-9000")
    with pytest.raises(errors.ConfigError, match=r"\['num_layerz'\]"):
        jaxlm.preset("smollm2-tiny", num_layerz=2)
    with pytest.raises(errors.MeshError, match=r"^--mesh '3x2' needs 6 devices but 8"):
        parse_mesh("3x2", 8)
    with pytest.raises(errors.MeshError, match=r"^--mesh '2by2': expected AxB"):
        parse_mesh("2by2", 8)
    with pytest.raises(errors.RequestError, match=r"^messages\[0\]: expected an object") as e:
        validate_messages(["hi"])
    assert e.value.param == "messages"
    with pytest.raises(errors.RequestError, match="^stop: empty strings"):
        normalize_stop([""])

    # requests are checked before any device work: an abstract model (shapes only) is enough
    g = Generator(nnx.eval_shape(lambda: DecoderLM(jaxlm.preset("smollm2-tiny"), rngs=nnx.Rngs(0))), context_len=16)
    with pytest.raises(errors.PromptTooLongError, match=r"the prompt has 12 tokens .* context length is 16"):
        g.make_request(list(range(12)), max_new_tokens=8)
    with pytest.raises(errors.RequestError, match=r"^max_new_tokens=0") as e:
        g.make_request([1, 2], max_new_tokens=0)
    assert e.value.param == "max_new_tokens"
    with pytest.raises(errors.RequestError, match=r"^prompt: token id 999 is outside the vocabulary"):
        g.make_request([1, 999])
    with pytest.raises(errors.ConfigError, match=r"^truncate='right'"):
        Generator(g.model, truncate="right")


def test_quantization_and_cli_errors_name_the_field():
    from jaxlm.cli import find
    from jaxlm.quant.formats import QuantFormat

    with pytest.raises(errors.ConfigError, match=r"^bits=5 is not supported"):
        QuantFormat.make(5, 64)
    with pytest.raises(errors.ConfigError, match=r"^group_size=48 is not supported"):
        QuantFormat.make(4, 48)
    with pytest.raises(errors.ConfigError, match="unknown command 'trian'"):
        find("trian")
