"""FLUTE lookup-table matmul: y = x @ (table[codes] * scales), codes packed by kernels.flute.pack.

`flute_matmul(x, packed, scales, table, bits=, group_size=, impl=None)` dispatches to
- "pallas": the Pallas GPU kernel (kernels/flute/pallas.py), the default on GPU when N % 16 == 0;
- "reference": pure-JAX dequantize-then-dot (kernels/flute/reference.py), the default elsewhere;
- "interpret": the Pallas kernel in interpret mode (CPU testing; slow).
Override per call with `impl=`, process-wide with `set_impl(...)` / the context manager `use_impl(...)`, or with
the environment variable JAXLM_FLUTE_IMPL.
"""

from __future__ import annotations


import jax

from kernels.flute import pallas, reference
from kernels.impl import ImplChoice

IMPLS = ("auto", "pallas", "reference", "interpret")
CHOICE = ImplChoice("", IMPLS, "JAXLM_FLUTE_IMPL")
set_impl, use_impl = CHOICE.set, CHOICE.use


def resolve_impl(impl: str | None, n: int) -> str:
    impl = CHOICE.get(impl)
    if impl == "auto":
        return "pallas" if jax.default_backend() == "gpu" and n % 16 == 0 else "reference"
    return impl


def flute_matmul(x, packed, scales, table, *, bits: int, group_size: int, impl: str | None = None, **kernel_kw):
    which = resolve_impl(impl, packed.shape[-1])
    if which == "reference":
        return reference.flute_matmul(x, packed, scales, table, bits=bits, group_size=group_size)
    return pallas.flute_matmul(x, packed, scales, table, bits=bits, group_size=group_size,
                               interpret=(which == "interpret"), **kernel_kw)


__all__ = ["flute_matmul", "set_impl", "use_impl", "resolve_impl", "IMPLS"]
