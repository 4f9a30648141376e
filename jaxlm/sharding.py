"""Meshes from "--mesh" strings and the one logical-axis rules table.

`--mesh AxB` means fsdp x tensor, `AxBxC` data x fsdp x tensor; one entry may be -1 (fills the devices).
Parameters and activations carry logical axis names; `LOGICAL_RULES` maps them onto mesh axes
(data, fsdp, tensor). Meshes use `AxisType.Auto` so `with_sharding_constraint` and GSPMD propagation work.

A "--mesh" string is parsed here only (`mesh_dims`). Every command goes the same way:
`prepare_devices(args.mesh)` right after argument parsing, BEFORE jax is imported (on a CPU-only machine it sets
the simulated host device count the mesh needs), then `make_mesh(args.mesh)`. Importing this module does not import
jax, so `from jaxlm.sharding import prepare_devices` is safe first thing in an entry point.
"""

from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING, Sequence

from jaxlm.errors import MeshError

if TYPE_CHECKING:
    from jax.sharding import Mesh, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
DEFAULT_CPU_DEVICES = 8  # simulated CPU devices a -1 entry fills when nothing else says how many
_HOST_COUNT_FLAG = "--xla_force_host_platform_device_count"

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


def mesh_dims(spec: str | Sequence[int]) -> list[int]:
    """The one "--mesh" parser: '8x1' -> [1, 8, 1], '2x2x2' -> [2, 2, 2], '-1x2' -> [1, -1, 2] (-1 not yet filled).

    Checks the syntax only (no device count needed, no jax); raises MeshError naming the flag."""
    if isinstance(spec, str):
        try:
            dims = [int(p) for p in spec.strip().lower().split("x")]
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
    return dims


def parse_mesh(spec: str | Sequence[int], num_devices: int | None = None) -> tuple[int, int, int]:
    """'8x1' -> (1, 8, 1); '2x2x2' -> (2, 2, 2); one -1 fills the remaining devices (default: jax.device_count())."""
    dims = mesh_dims(spec)
    if num_devices is None:
        import jax

        num_devices = jax.device_count()
    n = num_devices
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if n % known:
            raise MeshError(f"--mesh {spec!r}: {known} does not divide the {n} devices")
        dims[dims.index(-1)] = n // known
    if math.prod(dims) != n:
        raise MeshError(f"--mesh {spec!r} needs {math.prod(dims)} devices but {n} are available "
                        f"(set XLA_FLAGS={_HOST_COUNT_FLAG}={math.prod(dims)} on CPU)")
    return tuple(dims)  # type: ignore[return-value]


def mesh_device_count(spec: str | Sequence[int], default: int = DEFAULT_CPU_DEVICES) -> int:
    """Devices a "--mesh" string needs; a -1 entry fills up to `default` (rounded up to a multiple of the rest)."""
    dims = mesh_dims(spec)
    known = math.prod(d for d in dims if d > 0)
    if -1 in dims:
        return max(known, (default + known - 1) // known * known)
    return known


def prepare_devices(spec: str | Sequence[int] | None, *, default: int = DEFAULT_CPU_DEVICES, force: bool = False,
                    env: dict | None = None) -> int | None:
    """Prepare the devices a "--mesh" string needs; call it BEFORE jax is imported (every command does).

    Validates `spec` (MeshError names the flag), then sets `XLA_FLAGS=--xla_force_host_platform_device_count=N`
    (N = `mesh_device_count(spec, default)`) so a CPU-only machine simulates the mesh's devices. Only the host
    platform is affected: harmless on GPU/TPU. Returns N, or None when nothing was set: `spec` is None (no mesh
    asked for), jax is already imported (too late; `make_mesh` then reports a mismatch), or XLA_FLAGS already sets
    the count (the user's choice wins). `env` defaults to os.environ; `force` skips the jax-imported check."""
    if spec is None:
        return None
    n = mesh_device_count(spec, default)
    env = os.environ if env is None else env
    if "jax" in sys.modules and not force:
        return None
    flags = env.get("XLA_FLAGS", "")
    if _HOST_COUNT_FLAG.lstrip("-") in flags:
        return None
    env["XLA_FLAGS"] = (flags + f" {_HOST_COUNT_FLAG}={n}").strip()
    return n


def prepare_mesh(spec: str | Sequence[int] | None) -> Mesh | None:
    """`prepare_devices(spec)` then `make_mesh(spec)`: what a single-process command (serve, generate) does with its
    --mesh right after parsing its arguments. None (no --mesh) -> None: one device, no mesh."""
    if spec is None:
        return None
    prepare_devices(spec)
    return make_mesh(spec)


def describe_mesh(mesh: Mesh | None) -> str:
    """'mesh data=1 fsdp=2 tensor=1 over 2 cpu devices' (or the one device used without a mesh)."""
    import jax

    if mesh is None:
        return f"no mesh: 1 {jax.devices()[0].platform} device"
    axes = " ".join(f"{a}={mesh.shape[a]}" for a in MESH_AXES)
    return f"mesh {axes} over {mesh.devices.size} {mesh.devices.flat[0].platform} devices"


def make_mesh(spec: str | Sequence[int] = "-1x1", devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes over `devices` (default: all of jax.devices())."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

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
                    mesh: Mesh | None = None, rules: dict | None = None) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec. With a shape and mesh, axes that do not divide are replicated."""
    from jax.sharding import PartitionSpec as P

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
    import jax
    from jax.sharding import NamedSharding

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


def multi_device_mesh() -> bool:
    """Whether code runs under `use_mesh` of more than one device (unpartitioned kernels then step aside)."""
    mesh = _current_mesh()
    return mesh is not None and mesh.size > 1


def state_shardings(state, mesh: Mesh):
    """NamedShardings for an nnx.State whose Variables carry `axes` metadata (leading 'layers' added if stacked)."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

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
