"""The one exception hierarchy. Every error names the file, key, field, shape or flag that is wrong.

    JaxlmError (ValueError)
      ConfigError            unknown preset / command, invalid config field or flag value
      CheckpointError        missing file, unexpected / missing / mis-shaped checkpoint keys
        CheckpointNotFoundError  (also a FileNotFoundError)
      MeshError              a --mesh that does not parse or divide the devices, heads or batch
      ShapeError             an array of the wrong rank, width, batch or dtype
      DataError              a missing, empty or malformed data file, record or field
        DataFileNotFoundError    (also a FileNotFoundError)
      RequestError           a bad generation request: prompt, messages, stop strings, token counts
        SamplingError            a bad sampling parameter (temperature, top_p, ...)
        PromptTooLongError       a prompt (plus the tokens asked for) longer than the context
        BadRequest               an HTTP request the server answers with 400 (carries `param` and `code`)
      TrainingError          a run that cannot continue
        NonFiniteLossError       NaN/inf loss or gradient norm
      LLMError               an LLM backend call failed for good (also a RuntimeError)

Old import paths (jaxlm.infer.sampling.SamplingError, jaxlm.data.sources.DataError, ...) name the same classes.
Every class subclasses ValueError, so `except ValueError` keeps catching them.
"""

__all__ = ["JaxlmError", "ConfigError", "CheckpointError", "CheckpointNotFoundError", "MeshError", "ShapeError", "DataError", "DataFileNotFoundError", "RequestError", "SamplingError", "PromptTooLongError", "BadRequest", "TrainingError", "NonFiniteLossError", "LLMError"]


class JaxlmError(ValueError):
    """Base class for jaxlm's user-facing errors."""


class ConfigError(JaxlmError):
    """An unknown preset, an invalid field, or a config that does not match a checkpoint."""


class CheckpointError(JaxlmError):
    """A missing file, or unexpected / missing / mis-shaped keys in a checkpoint."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path (file or directory) that does not exist or holds no checkpoint."""


class MeshError(JaxlmError):
    """A mesh that does not divide the devices, the heads or the batch."""


class ShapeError(JaxlmError):
    """A model input of the wrong rank, width or batch (the message names the argument and its shape)."""


class DataError(JaxlmError):
    """Bad data: a missing, empty, non-UTF-8 or malformed file, record or field (the message names it)."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or dataset that does not exist."""


class RequestError(JaxlmError):
    """A bad generation request: prompt, chat messages, stop strings, token counts or seeds (names the field).

    `param` is the request field at fault when known (the server reports it)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class SamplingError(RequestError):
    """An invalid sampling parameter (the message names it)."""


class PromptTooLongError(RequestError):
    """A prompt (plus the tokens asked for) does not fit the model's context."""


class BadRequest(RequestError):
    """An HTTP request the server rejects with 400; `param` names the offending field, `code` the OpenAI code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message, param)
        self.code = code


class TrainingError(JaxlmError):
    """A training run that cannot continue (the message says where and why)."""


class NonFiniteLossError(TrainingError):
    """The loss or the gradient norm became NaN/inf; training stopped and the last good checkpoint is kept."""


class LLMError(JaxlmError, RuntimeError):
    """An LLM backend call failed for good (retries exhausted or a non-retryable HTTP status)."""


def _register_with_kernels() -> None:
    """The kernels (a leaf package) raise these classes when used through jaxlm (see kernels/errors.py)."""
    from kernels import errors as kernel_errors

    kernel_errors.register(shape=ShapeError, config=ConfigError)


_register_with_kernels()
