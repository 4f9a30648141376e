"""Exception types. Every error names the file, key, shape or flag that is wrong."""


class JaxlmError(ValueError):
    """Base class for jaxlm's user-facing errors."""


class ConfigError(JaxlmError):
    """An unknown preset, an invalid field, or a config that does not match a checkpoint."""


class CheckpointError(JaxlmError):
    """A missing file, or unexpected / missing / mis-shaped keys in a checkpoint."""


class MeshError(JaxlmError):
    """A mesh that does not divide the devices, the heads or the batch."""


class ShapeError(JaxlmError):
    """A model input of the wrong rank, width or batch (the message names the argument and its shape)."""
