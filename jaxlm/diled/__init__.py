"""DiLED on the shared engine: `DiLEDTask` (the Task that `jaxlm.train.train` runs) and `load_diled` (a trained run
back as a model). The NNX modules, objective and capabilities are in jaxlm.models.diled (below the engine)."""
