"""Training, the one engine: the Task protocol, configs with phases and freezing, optimizer and schedules, train
state, the jitted step, checkpoints and the loop.

Importing this package does not import jax (so `jaxlm.train.distributed.prepare_devices` can run first);
the names below load their modules on first use.
"""

_LAZY = {
    "LRSchedule": "config", "OptimConfig": "config", "PhaseConfig": "config", "RunConfig": "config",
    "TrainConfig": "config", "apply_overrides": "config", "scale_steps": "config",
    "make_optimizer": "optim", "make_schedule": "optim", "TrainState": "state", "init_state": "state",
    "make_train_step": "step", "make_eval_step": "step", "make_step": "step",
    "Task": "task", "LMTask": "task", "ArrayPipeline": "task", "setup_state": "state", "evaluate": "loop", "evaluate_model": "loop",
    "Checkpointer": "checkpoint", "export_hf": "checkpoint",
    "train": "loop", "NonFiniteLossError": "loop", "RunResult": "loop",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"jaxlm.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'jaxlm.train' has no attribute {name!r}")


__all__ = sorted(_LAZY)
