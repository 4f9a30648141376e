"""The packed code layout read by the FLUTE kernels; implemented in kernels/flute/pack.py (kernels is a leaf
package, so the layout lives next to the kernels that read it). Re-exported here for jaxlm.quant users."""

from kernels.flute.pack import pack, planes, rows_per_group, unpack

__all__ = ["pack", "unpack", "planes", "rows_per_group"]
