"""Decode attention: one new query per row over the filled slots of a stacked KV cache.

`kernels.decode.pallas.decode_attention` is the Pallas GPU kernel (Triton lowering; interpret mode on CPU); the
dispatcher and the XLA path live in `jaxlm.nn.decode`.
"""

from kernels.decode.pallas import cross_lower, decode_attention, unsupported

__all__ = ["decode_attention", "cross_lower", "unsupported"]
