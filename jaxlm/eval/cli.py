"""python -m jaxlm eval ARGS = the lm-evaluation-harness CLI (`lm_eval ARGS`) with the `jaxlm` model registered and
jaxlm's offline tasks on the include path.

    python -m jaxlm eval --model jaxlm --model_args path=runs/crystal-tiny --tasks jaxlm_heldout_cloze,jaxlm_heldout_lm
    python -m jaxlm eval --model jaxlm --model_args path=model.gguf --tasks jaxlm_code_exec --confirm_run_unsafe_code
    python -m jaxlm eval --model local-completions --model_args base_url=http://127.0.0.1:8000/v1/completions,\\
        tokenizer_backend=remote,tokenized_requests=True --tasks jaxlm_heldout_cloze
    python -m jaxlm eval ls tasks

Every harness flag works (--limit, --output_path, --use_cache DIR: a crashed run resumes from the requests already
answered, --log_samples, --apply_chat_template, ...).
"""

from __future__ import annotations

import sys

from jaxlm.cli import command_parser
from jaxlm.eval.offline import TASKS_DIR

READS = ("--model_args path= (any checkpoint jaxlm.io.load_model reads) or a server's base_url; the tasks' data "
         "(jaxlm's offline tasks ship with the package; --include_path adds the user's YAML tasks)")
WRITES = ("the harness' results table to stdout; with --output_path the results JSON (and --log_samples the "
          "per-sample jsonl); with --use_cache a sqlite cache of answered requests")


def help_parser():
    """The --help of this command: the main flags (everything else goes to the harness unchanged)."""
    from jaxlm.eval.offline import TASKS

    p = command_parser("jaxlm.eval.cli", __doc__.strip(), reads=READS, writes=WRITES,
                       epilog="Every other flag is the harness' own: python -m jaxlm eval run --help.")
    p.add_argument("--model", default="jaxlm", help="harness model: jaxlm, local-completions, hf, ...")
    p.add_argument("--model_args", default="", help="e.g. path=DIR,step=N,mesh=1x2,truncation=left,tokenizer=PATH")
    p.add_argument("--tasks", default=None, help=f"comma-separated; jaxlm's offline tasks: {', '.join(TASKS)} "
                                                 f"(tag jaxlm_heldout_lm)")
    p.add_argument("--include_path", default=str(TASKS_DIR), help="folders of YAML tasks (jaxlm's are always added)")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        help_parser().parse_args(["--help"])  # prints and exits 0
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("error: lm-evaluation-harness is not installed: pip install -e '.[eval]'", file=sys.stderr)
        return 2
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    import jaxlm.eval.harness  # noqa: F401  (registers --model jaxlm)
    from jaxlm.errors import JaxlmError

    if "--include_path" in argv:
        i = argv.index("--include_path") + 1
        argv[i] = f"{argv[i]}:{TASKS_DIR}"
    elif argv[0] not in ("validate",):
        argv += ["--include_path", str(TASKS_DIR)]
    import lm_eval.tasks

    from jaxlm.eval.offline import only_jaxlm_tasks

    old, manager = sys.argv, lm_eval.tasks.TaskManager
    tasks = argv[argv.index("--tasks") + 1] if "--tasks" in argv[:-1] else ""
    if only_jaxlm_tasks(tasks) and argv.count("--include_path") == 1 and argv[argv.index("--include_path") + 1] \
            == str(TASKS_DIR):  # only jaxlm's tasks: skip indexing the harness' ~10k built-in task files
        lm_eval.tasks.TaskManager = type("TaskManager", (manager,), {
            "__init__": lambda self, *a, **k: manager.__init__(self, *a, **{"include_defaults": False, **k})})
    sys.argv = ["lm-eval", *argv]
    try:
        setup_logging()
        parser = HarnessCLI()
        parser.execute(parser.parse_args())
    except JaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        sys.argv, lm_eval.tasks.TaskManager = old, manager
    return 0


if __name__ == "__main__":
    sys.exit(main())
