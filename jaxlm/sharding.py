"""Meshes from "--mesh" strings and the one logical-axis rules table.

`--mesh AxB` means fsdp x tensor, `AxBxC` data x fsdp x tensor; one entry may be -1 (fills the devices).
Parameters and activations carry logical axis names; `LOGICAL_RULES` maps them onto mesh axes
(data, fsdp, tensor). Meshes use `AxisType.Auto` so `with_sharding_constraint` and GSPMD propagation work.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.errors import MeshError

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated)
LOGICAL_RULES: dict[str, object] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "embed": "fsdp",        # parameter rows / columns along the model width
    "act_embed": None,      # activations keep their width whole
    "heads": "tensor",
    "kv": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": None,
    "norm": None,
}


def parse_mesh(spec: str | Sequence[int], num_devices: int | None = None) -> tuple[int, int, int]:
    """'8x1' -> (1, 8, 1); '2x2x2' -> (2, 2, 2); one -1 fills the remaining devices."""
    n = jax.device_count() if num_devices is None else num_devices
    if isinstance(spec, str):
        try:
            dims = [int(p) for p in spec.lower().split("x")]
        except ValueError:
            raise MeshError(f"--mesh {spec!r}: expected AxB (fsdp x tensor) or AxBxC (data x fsdp x tensor)") from None
    else:
        dims = [int(d) for d in spec]
    if len(dims) == 2:
        dims = [1] + dims
    if len(dims) != 3:
        raise MeshError(f"--mesh {spec!r}: expected 2 or 3 dimensions, got {len(dims)}")
    if dims.count(-1) > 1:
        raise MeshError(f"--mesh {spec!r}: at most one dimension may be -1")
    if any(d == 0 or d < -1 for d in dims):
        raise MeshError(f"--mesh {spec!r}: dimensions must be positive (or one -1)")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if n % known:
            raise MeshError(f"--mesh {spec!r}: {known} does not divide the {n} devices")
        dims[dims.index(-1)] = n // known
    if math.prod(dims) != n:
        raise MeshError(f"--mesh {spec!r} needs {math.prod(dims)} devices but {n} are available "
                        f"(set XLA_FLAGS=--xla_force_host_platform_device_count={math.prod(dims)} on CPU)")
    return tuple(dims)  # type: ignore[return-value]


def make_mesh(spec: str | Sequence[int] = "-1x1", devices=None) -> Mesh:
    devices = jax.devices() if devices is None else list(devices)
    dims = parse_mesh(spec, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * 3
    return Mesh(np.asarray(devices).reshape(dims), MESH_AXES, axis_types=auto)


def check_mesh_for_model(mesh: Mesh, cfg, batch_size: int | None = None) -> None:
    """Raise MeshError before any work if the mesh cannot shard this model (or batch)."""
    t = mesh.shape["tensor"]
    for name in ("num_heads", "num_kv_heads"):
        v = getattr(cfg, name, None)
        if v is not None and v % t:
            raise MeshError(f"--mesh tensor={t} does not divide {name}={v}")
    if batch_size is not None:
        dp = mesh.shape["data"] * mesh.shape["fsdp"]
        if batch_size % dp:
            raise MeshError(f"batch size {batch_size} is not divisible by data*fsdp={dp} of the mesh")


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules: dict | None = None) -> P:
    """Map logical axis names to a PartitionSpec. With a shape and mesh, axes that do not divide are replicated."""
    if names is None:
        return P()
    rules = LOGICAL_RULES if rules is None else rules
    out, used = [], set()
    for i, nm in enumerate(names):
        ax = rules.get(nm) if nm is not None else None
        if ax is None:
            out.append(None)
            continue
        axes = (ax,) if isinstance(ax, str) else tuple(ax)
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
                axes = ()
        used.update(axes)
        out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return P(*out)


def shard(x, names: Sequence[str | None]):
    """Constrain an activation to its logical sharding when running under a mesh (no-op otherwise)."""
    mesh = _current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh)))


_MESH_STACK: list[Mesh] = []


class use_mesh:
    """Context manager making `shard(...)` constraints active (and entering the mesh)."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    def __enter__(self):
        _MESH_STACK.append(self.mesh)
        return self.mesh

    def __exit__(self, *exc):
        _MESH_STACK.pop()


def _current_mesh() -> Mesh | None:
    return _MESH_STACK[-1] if _MESH_STACK else None


def state_shardings(state, mesh: Mesh):
    """NamedShardings for an nnx.State whose Variables carry `axes` metadata (leading 'layers' added if stacked)."""
    from flax import nnx

    def one(v):
        if isinstance(v, nnx.Variable):
            val = v.get_value()
            names = getattr(v, "axes", None)
            if names is not None and len(names) == val.ndim - 1:
                names = ("layers",) + tuple(names)
            if names is None or len(names) != val.ndim:
                names = (None,) * val.ndim
            return v.replace(NamedSharding(mesh, logical_to_spec(names, val.shape, mesh)))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
