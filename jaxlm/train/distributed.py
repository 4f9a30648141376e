"""Process setup: simulated CPU devices for a local run, `jax.distributed.initialize()` on clusters.

`jaxlm.sharding.prepare_devices(mesh_spec)` (re-exported here) must run BEFORE jax is imported: on a CPU-only
machine it sets `XLA_FLAGS=--xla_force_host_platform_device_count=N` with N = the number of devices the mesh
needs. It only touches the host (CPU) platform, so it is harmless on GPU/TPU machines.
`initialize()` (after importing jax) joins a multi-process job when the environment describes one: SLURM,
Open MPI, a TPU pod slice, or explicit JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
"""

from __future__ import annotations

import os

# the one "--mesh" parser and device preparation live in jaxlm.sharding (re-exported for old imports)
from jaxlm.sharding import DEFAULT_CPU_DEVICES, mesh_device_count, prepare_devices  # noqa: F401


def cluster_env() -> str | None:
    """Which multi-process launcher (if any) the environment shows."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "openmpi"
    if env.get("TPU_WORKER_HOSTNAMES") and "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return "tpu-pod"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu-multislice"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> dict:
    """Call jax.distributed.initialize() when running multi-process; return a small description."""
    import jax

    kind = "explicit" if coordinator else cluster_env()
    if kind is not None:
        kw = {}
        coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
        if coordinator:
            kw["coordinator_address"] = coordinator
            kw["num_processes"] = int(num_processes or os.environ["JAX_NUM_PROCESSES"])
            kw["process_id"] = int(process_id if process_id is not None else os.environ["JAX_PROCESS_ID"])
        if _cpu_only():
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives
        jax.distributed.initialize(**kw)  # SLURM / Open MPI / TPU pods are auto-detected without arguments
    return {"launcher": kind or "single-process", "process_index": jax.process_index(),
            "process_count": jax.process_count(), "devices": jax.device_count(),
            "local_devices": jax.local_device_count(), "platform": jax.devices()[0].platform}


def _cpu_only() -> bool:
    plats = os.environ.get("JAX_PLATFORMS", "").lower()
    if plats:
        return plats.split(",")[0].strip() == "cpu"
    return not (os.path.exists("/dev/nvidia0") or os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio"))
