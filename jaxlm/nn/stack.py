"""Stacked layers: build `num_layers` copies of a block with a leading 'layers' axis (run them with lax.scan)."""

from __future__ import annotations

from flax import nnx


def stack_layers(make_block, num_layers: int, rngs: nnx.Rngs):
    """make_block(rngs) -> nnx.Module; returns one module whose parameters have a leading axis of num_layers."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(r):
        return make_block(r)

    return make(rngs)
