"""Orbax checkpoints of a training run: async saves, LLM360-style retention, exact resume, mesh-free restore.

Each checkpoint step holds four items:
  params  the float32 master weights (a pure nested dict, restorable alone, e.g. for HF export)
  train   optimizer state, step and RNG key
  data    the data iterator's JSON state (exact resume of the token stream)
  meta    JSON: the run config and a compatibility record checked on resume

Retention keeps the latest `keep_latest` checkpoints plus `keep_release` evenly spaced "release" checkpoints
over the whole run (LLM360 publishes 360 evenly spaced checkpoints of Amber).
Restoring takes abstract arrays carrying the *current* mesh's shardings, so a run saved on one mesh resumes on
any other.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.io.run import export_hf  # noqa: F401  (moved to jaxlm.io.run; importable from here)

ITEMS = ("params", "train", "data", "meta")


def release_steps(total_steps: int, count: int) -> list[int]:
    """`count` evenly spaced steps ending at `total_steps` (e.g. 4 over 100 -> [25, 50, 75, 100])."""
    if count <= 0 or total_steps <= 0:
        return []
    return sorted({max(1, round(total_steps * (i + 1) / count)) for i in range(count)})


def retained_steps(saved: list[int], keep_latest: int, release: list[int]) -> list[int]:
    """Which of the `saved` steps the policy keeps (the pure rule; the manager applies the same one)."""
    saved = sorted(saved)
    keep = set(saved[-keep_latest:]) if keep_latest > 0 else set()
    keep |= set(saved) & set(release)
    return sorted(keep)


class Checkpointer:
    def __init__(self, directory, *, save_every: int, keep_latest: int = 2, release: list[int] = (),
                 total_steps: int | None = None, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.save_every = int(save_every)
        self.keep_latest = int(keep_latest)
        self.release = sorted(set(release))
        self.total_steps = total_steps
        policies = [cm.LatestN(n=max(self.keep_latest, 1))]
        if self.release:
            policies.append(cm.CustomSteps(steps=self.release))
        opts = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies), enable_async_checkpointing=async_save,
            create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts, item_names=ITEMS)

    # -- saving
    def should_save(self, step: int) -> bool:
        return (self.save_every > 0 and step % self.save_every == 0) or step in self.release or \
            (self.total_steps is not None and step == self.total_steps)

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        """Save the TrainState `state` (after `step` updates) and the data iterator state that follows it."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step, "rng": state.rng}),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        self.manager.save(step, args=args, force=True)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()

    # -- reading
    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state):
        """(TrainState, data_state, meta) restored onto the shardings carried by `abstract_state`."""
        if step not in self.steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; have {self.steps()}")
        a = abstract_state
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(a.params),
            train=ocp.args.StandardRestore({"opt_state": a.opt_state, "step": a.step, "rng": a.rng}),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        try:
            out = self.manager.restore(step, args=args)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} does not match this run's "
                                  f"state layout: {e}") from e
        tr = out["train"]
        state = type(a)(params=out["params"], opt_state=tr["opt_state"], step=tr["step"], rng=tr["rng"])
        return state, out["data"], out["meta"]

    def restore_params(self, step: int, abstract_params):
        """Parameters only; leaves without a sharding land on this process's first device (any topology)."""
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract_params = jax.tree.map(
            lambda x: x if getattr(x, "sharding", None) is not None else
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), abstract_params)
        out = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
        return out["params"]


def restore_recorded_params(run_dir, key: str, what: str, kind: str, abstract_for, step: int | None = None):
    """Parameters of a Task's run whose config is recorded as compat.model[`key`] (DiLED, Pandora, ...).

    Opens `<run_dir>/checkpoints`, takes `step` (default: the latest), reads the saved record and calls
    `abstract_for(saved, where)` -> the abstract parameter tree to restore (it may check the record against a given
    config and raise CheckpointError naming `where`). Returns the restored parameters. A missing directory or step
    raises CheckpointNotFoundError naming the run `kind`; a checkpoint without the record raises CheckpointError."""
    from jaxlm.errors import CheckpointNotFoundError

    run_dir = Path(run_dir)
    cdir = run_dir / "checkpoints"
    if not cdir.is_dir():
        raise CheckpointNotFoundError(f"{cdir}: no checkpoints (is {run_dir} a {kind} run directory?)")
    ck = Checkpointer(cdir, save_every=1, async_save=False)
    try:
        steps = ck.steps()
        if not steps:
            raise CheckpointNotFoundError(f"{cdir}: no checkpoints")
        step = steps[-1] if step is None else int(step)
        saved = ck.read_meta(step).get("compat", {}).get("model", {}).get(key)
        if saved is None:
            raise CheckpointError(f"{cdir} step {step}: not a {what} checkpoint (no compat.model.{key} record)")
        return ck.restore_params(step, abstract_for(saved, f"{cdir} step {step}"))
    finally:
        ck.close()


# model-config keys that choose how a step executes, not what it computes: a run may resume with other values
# (e.g. flash attention on the cluster, the chunked path on a laptop; remat to fit a smaller machine)
EXECUTION_ONLY = frozenset({"attention_impl", "remat"})


def _strip_execution(d):
    if isinstance(d, dict):
        return {k: _strip_execution(v) for k, v in d.items() if k not in EXECUTION_ONLY}
    return d


def check_compatible(saved: dict, current: dict, where: str) -> None:
    """Raise ConfigError naming every key whose value differs between a checkpoint and this run (the keys in
    EXECUTION_ONLY are not compared, at any depth)."""
    saved, current = _strip_execution(saved), _strip_execution(current)
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k, "<missing>") != b.get(k, "<missing>"):
                    diffs.append(f"{key}.{k}: checkpoint has {a.get(k, '<missing>')!r}, this run has "
                                 f"{b.get(k, '<missing>')!r}")
        elif a != b:
            diffs.append(f"{key}: checkpoint has {a!r}, this run has {b!r}")
    if diffs:
        raise ConfigError(f"cannot resume from {where}: the run config is incompatible with the checkpoint:\n  "
                          + "\n  ".join(diffs) + "\n(start a new run with another --out, or restore the settings)")
