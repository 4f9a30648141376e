"""Errors raised by the kernels, without importing jaxlm (kernels/ is a leaf package).

`shape_error(msg)` / `config_error(msg)` build the exception to raise. On their own the kernels raise
`KernelShapeError` / `KernelConfigError` (ValueErrors); `jaxlm.errors` registers its `ShapeError` / `ConfigError`
here when it is imported, so a kernel used through jaxlm raises jaxlm's errors (`except jaxlm.errors.ShapeError`
catches them) while the kernels still import nothing from jaxlm.
"""

from __future__ import annotations


class KernelShapeError(ValueError):
    """A kernel cannot take these shapes/dtypes (the message names them)."""


class KernelConfigError(ValueError):
    """An unknown kernel implementation name or setting."""


_CLASSES = {"shape": KernelShapeError, "config": KernelConfigError}


def register(*, shape: type | None = None, config: type | None = None) -> None:
    """Use these exception classes (e.g. jaxlm.errors.ShapeError / ConfigError) for the kernels' errors."""
    if shape is not None:
        _CLASSES["shape"] = shape
    if config is not None:
        _CLASSES["config"] = config


def shape_error(msg: str) -> Exception:
    return _CLASSES["shape"](msg)


def config_error(msg: str) -> Exception:
    return _CLASSES["config"](msg)
