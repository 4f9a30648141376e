"""Execution-based code evaluation: HumanEval-format problems, the unbiased pass@k estimator, and a sandbox.

    problems = read_humaneval("my_problems.jsonl")        # task_id, prompt, test, entry_point (canonical_solution)
    r = run_program(problem["prompt"] + completion + "\\n" + problem["test"] + f"\\ncheck({entry_point})\\n")
    r.passed, r.status                                     # 'passed' | 'failed' | 'timeout' | 'memory' | 'error'
    pass_at_k(n=10, c=3, k=1)                              # 1 - C(n - c, k) / C(n, k)

Generated code never runs in the evaluating process: `run_program` starts a fresh `python -I` in its own process
group and an empty temporary working directory, with resource limits the child sets on itself before it compiles the program
(`resource.setrlimit`: address space (memory), CPU seconds, file size, no core files) and a wall-clock timeout after
which the whole process group is killed. This bounds accidents (an infinite loop, a memory hog, a runaway print);
it is not a security boundary against hostile code, which needs a container or VM.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxlm.data.jsonl import parse_jsonl
from jaxlm.errors import ConfigError, DataError, DataFileNotFoundError

HUMANEVAL_KEYS = ("task_id", "prompt", "test", "entry_point")


def read_humaneval(path) -> list[dict]:
    """Problems from a HumanEval-format .jsonl (or .jsonl.gz) file: one JSON object per line with task_id, prompt,
    test (defining `check(candidate)`), entry_point, and optionally canonical_solution. Errors name the line."""
    p = Path(path)
    if not p.exists():
        raise DataFileNotFoundError(f"HumanEval file not found: {p}")
    opener = gzip.open if p.suffix == ".gz" else open
    out = []
    with opener(p, "rt", encoding="utf-8") as f:
        for n, rec in parse_jsonl(f, p):
            missing = [k for k in HUMANEVAL_KEYS if not isinstance(rec.get(k), str)]
            if missing:
                raise DataError(f"{p}:{n}: missing string field(s) {missing} (HumanEval format: "
                                f"{', '.join(HUMANEVAL_KEYS)})")
            out.append(rec)
    if not out:
        raise DataError(f"{p}: no problems")
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c pass (Chen et al. 2021):
    1 - C(n - c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or k < 1:
        raise ConfigError(f"pass_at_k(n={n}, c={c}, k={k}): need 0 <= c <= n and k >= 1")
    if k > n:
        raise ConfigError(f"pass_at_k: k={k} is larger than the number of samples n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class RunResult:
    status: str          # 'passed' | 'failed' | 'timeout' | 'memory' | 'error'
    returncode: int | None
    stderr: str          # the last 2,000 characters

    @property
    def passed(self) -> bool:
        return self.status == "passed"


_LAUNCHER = """\
import resource, sys
mem, cpu = {mem}, {cpu}
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
path = sys.argv[1]
sys.argv = [path]
with open(path, encoding="utf-8") as f:
    code = compile(f.read(), path, "exec")
del resource, mem, cpu, f
exec(code, {{"__name__": "__main__", "__builtins__": __builtins__}})
"""


def run_program(code: str, *, timeout: float = 5.0, memory_mb: int = 512) -> RunResult:
    """Run `code` in a separate, resource-limited Python process (see the module docstring). 'passed' means it
    exited with status 0 within `timeout` seconds and `memory_mb` MiB of address space."""
    if timeout <= 0 or memory_mb < 64:
        raise ConfigError(f"run_program: timeout={timeout} must be > 0 and memory_mb={memory_mb} >= 64")
    with tempfile.TemporaryDirectory(prefix="jaxlm-sandbox-") as d:
        prog = Path(d) / "program.py"
        prog.write_text(code, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "HOME": d}
        launcher = _LAUNCHER.format(mem=int(memory_mb) << 20, cpu=max(1, int(timeout + 0.999)))
        # the limits are set by the child itself before the program is compiled (no preexec_fn: no fork of this
        # multithreaded process, only spawn)
        proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", launcher, str(prog)], cwd=d, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            _, err = proc.communicate()
            return RunResult("timeout", None, (err or b"").decode("utf-8", "replace")[-2000:])
        finally:
            _kill(proc)
    text = (err or b"").decode("utf-8", "replace")[-2000:]
    rc = proc.returncode
    if rc == 0:
        return RunResult("passed", rc, text)
    if "MemoryError" in text or rc == -signal.SIGKILL and "Traceback" not in text:
        return RunResult("memory", rc, text)
    if rc in (-signal.SIGXCPU, -signal.SIGKILL):
        return RunResult("timeout", rc, text)
    return RunResult("failed" if "Traceback" in text else "error", rc, text)


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_program(problem: dict, completion: str) -> str:
    """The program that tests one completion of a HumanEval problem: prompt + completion, the test, check()."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def evaluate_samples(problem: dict, completions: list[str], ks=(1,), *, timeout: float = 5.0,
                     memory_mb: int = 512) -> dict:
    """{'pass@k': ..., 'n': n, 'passed': c} for one problem's sampled completions."""
    results = [run_program(check_program(problem, c), timeout=timeout, memory_mb=memory_mb) for c in completions]
    c = sum(r.passed for r in results)
    out = {f"pass@{k}": pass_at_k(len(completions), c, k) for k in ks if k <= len(completions)}
    return {**out, "n": len(completions), "passed": c, "statuses": [r.status for r in results]}


__all__ = ["read_humaneval", "pass_at_k", "run_program", "RunResult", "check_program", "evaluate_samples"]
