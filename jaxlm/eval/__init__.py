"""Evaluation: the lm-evaluation-harness model `jaxlm` (harness.py), offline tasks (offline.py, tasks/), execution-
based code evaluation (code.py), and analysis across a run's checkpoints (recipes.analysis).

The harness is the optional extra `pip install -e '.[eval]'`. When it is installed, importing this package
registers the `jaxlm` model with it; `task_manager()` gives a TaskManager that also knows jaxlm's offline tasks.
"""

from importlib.util import find_spec

from jaxlm.eval.code import pass_at_k, read_humaneval, run_program
from jaxlm.eval.offline import TASKS, TASKS_DIR, build_task_data, task_manager

if find_spec("lm_eval") is not None:
    from jaxlm.eval.harness import JaxlmLM  # noqa: F401  (registers --model jaxlm)

__all__ = ["pass_at_k", "read_humaneval", "run_program", "TASKS", "TASKS_DIR", "build_task_data", "task_manager",
           "JaxlmLM"]
