"""SSD (Mamba-2 state-space dual) kernels and their dispatcher.

`ssd(x, a, B, C, chunk_size, initial_state, impl)` -> (y [B,T,H,P] float32, final_state [B,H,P,N]).
impl:
- "auto" (default): "pallas_fwd" on GPU when the kernels take the shapes and dtypes and no multi-device mesh is
  active (else "chunked"); "hybrid" elsewhere. The Pallas backward kernels have not run on a GPU yet (only
  interpret mode and cross-lowering on CPU), so "auto" keeps XLA's backward until benchmarks/gpu_suite.py (which
  checks the Pallas backward explicitly) has passed on a device;
- "hybrid": the sequential scan forward with the chunked algorithm's backward (recomputed): on CPU the scan
  forward is ~10x faster than the chunked one, but its backward is 8-15x slower than the chunked backward
  (BENCHMARKS.md, benchmarks/ssd.py);
- "chunked": the pure-JAX chunked algorithm (kernels/ssd/chunked.py; O(T Q) work, parallel over chunks);
- "scan": the sequential reference, one step per token (kernels/ssd/reference.py);
- "pallas": the Pallas GPU kernels (kernels/ssd/pallas.py), forward and backward (a custom_vjp whose backward is
  three Pallas kernels; ShapeError naming the shape or dtype when they cannot take it);
- "pallas_fwd": the Pallas forward kernel with XLA's chunked backward (`ssd_pallas(..., bwd="xla")`);
- "interpret": that kernel in interpret mode (CPU testing; slow).
Override per call with `impl=`, process-wide with `use_impl(...)`, or with the environment variable JAXLM_SSD_IMPL.
"""

from __future__ import annotations

import functools

import jax

from kernels.impl import ImplChoice
from kernels.ssd.chunked import chunked_backward, segsum, ssd_chunked
from kernels.ssd.pallas import ssd_pallas, unsupported
from kernels.ssd.reference import expand_groups, ssd_scan, ssd_step

IMPLS = ("auto", "hybrid", "chunked", "scan", "pallas", "pallas_fwd", "interpret")
CHOICE = ImplChoice("SSD", IMPLS, "JAXLM_SSD_IMPL")
set_impl, use_impl = CHOICE.set, CHOICE.use


def resolve_impl(impl: str | None, x_shape, B_shape, chunk_size: int, *, sharded: bool = False,
                 dtype=None) -> str:
    """The path for these shapes (and dtypes: of x, B and C, when given). sharded: the call runs under a multi-device
    mesh (the kernel is not partitioned, so "auto" takes XLA's chunked path there)."""
    impl = CHOICE.get(impl)
    if impl == "auto":
        if jax.default_backend() == "gpu":  # the kernel is not partitioned: XLA's chunked path under a mesh
            fits = unsupported(x_shape, B_shape, chunk_size, dtype) is None and not sharded
            return "pallas_fwd" if fits else "chunked"  # XLA's backward until the kernels' has run on a GPU
        return "hybrid"
    return impl


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def ssd_hybrid(x, a, B, C, chunk_size: int = 256, initial_state=None):
    """The sequential scan's forward, the chunked algorithm's backward (same values; see the module docstring)."""
    return ssd_scan(x, a, B, C, initial_state)


ssd_hybrid.defvjp(lambda x, a, B, C, q, s0: (ssd_scan(x, a, B, C, s0), (x, a, B, C, s0)), chunked_backward)


def ssd(x, a, B, C, chunk_size: int = 256, initial_state=None, impl: str | None = None, *, sharded: bool = False):
    which = resolve_impl(impl, x.shape, B.shape, chunk_size, sharded=sharded, dtype=(x.dtype, B.dtype, C.dtype))
    if which == "chunked":
        return ssd_chunked(x, a, B, C, chunk_size, initial_state)
    if which == "scan":
        return ssd_scan(x, a, B, C, initial_state)
    if which == "hybrid":
        return ssd_hybrid(x, a, B, C, int(chunk_size), initial_state)
    return ssd_pallas(x, a, B, C, chunk_size, initial_state, interpret=(which == "interpret"),
                      bwd="xla" if which == "pallas_fwd" else "pallas")


__all__ = ["ssd", "ssd_chunked", "ssd_scan", "ssd_hybrid", "ssd_pallas", "ssd_step", "segsum", "expand_groups", "IMPLS",
           "use_impl", "resolve_impl"]
