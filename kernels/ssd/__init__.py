"""SSD (Mamba-2 state-space dual) kernels.

`ssd(x, a, B, C, chunk_size, initial_state, impl)` -> (y [B,T,H,P] float32, final_state [B,H,P,N]).
impl: "chunked" (default; pure-JAX chunked algorithm) or "scan" (sequential reference, one step per token).
"""

from __future__ import annotations

from kernels.ssd.chunked import segsum, ssd_chunked
from kernels.ssd.reference import expand_groups, ssd_scan, ssd_step

IMPLS = ("chunked", "scan")


def ssd(x, a, B, C, chunk_size: int = 256, initial_state=None, impl: str = "chunked"):
    if impl == "chunked":
        return ssd_chunked(x, a, B, C, chunk_size, initial_state)
    if impl == "scan":
        return ssd_scan(x, a, B, C, initial_state)
    raise ValueError(f"impl={impl!r}: expected one of {IMPLS}")


__all__ = ["ssd", "ssd_chunked", "ssd_scan", "ssd_step", "segsum", "expand_groups", "IMPLS"]
