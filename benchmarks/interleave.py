"""Interleaved CPU comparisons across thread settings: one worker process per (implementation, threads).

A thread setting of XLA's CPU backend is fixed when the backend starts, so comparing jaxlm at 1 and at all cores
with torch at 1 and at all cores needs separate processes. Each worker builds its implementation once, then waits
for "run" commands; the driver sends the rounds round-robin (worker A, B, C, D, A, B, ...), so a change of load
on a shared machine hits every setting alike, and reports per-setting totals.

A worker with `threads=1` is pinned to one core (`sched_setaffinity`, inherited by every thread it starts), torch
is told `set_num_threads(1)` and XLA gets `--xla_cpu_multi_thread_eigen=false`; with `threads=None` it keeps the
machine's defaults (all cores).

Worker side (a benchmark script's `--worker NAME` mode): `serve(run, info)` where `run(i)` performs unit of work i
and returns a JSON-able value (e.g. the loss). Driver side: `Pool({name: (argv, threads)})`, `pool.measure(rounds,
per_round)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks.record import load_average  # noqa: F401  (re-exported: the callers import it from here)

READY = "INTERLEAVE_READY "
DONE = "INTERLEAVE_DONE "


def worker_env(threads: int | None, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    if threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        env["OMP_NUM_THREADS"] = "1"
        env["MKL_NUM_THREADS"] = "1"
    env["JAXLM_BENCH_THREADS"] = "" if threads is None else str(threads)
    return env


def apply_threads() -> int | None:
    """In a worker, before importing jax/torch: pin to one core when asked. Returns the setting (None = default)."""
    t = os.environ.get("JAXLM_BENCH_THREADS", "")
    if not t:
        return None
    n = int(t)
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cpus[:n]))
    return n


def serve(run, info: dict) -> None:
    """Worker loop: announce `info`, then for each "start count" line run units start..start+count-1 and reply with
    the elapsed seconds and the last value."""
    out = sys.stdout
    out.write(READY + json.dumps(info) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line == "quit":
            break
        start, count = map(int, line.split())
        t0 = time.perf_counter()
        values = [run(i) for i in range(start, start + count)]
        dt = time.perf_counter() - t0
        out.write(DONE + json.dumps({"s": dt, "last": values[-1] if values else None, "values": values}) + "\n")
        out.flush()


class Worker:
    def __init__(self, name: str, argv: list[str], threads: int | None):
        self.name, self.threads = name, threads
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=worker_env(threads), bufsize=1)
        self.info = json.loads(self._read(READY))

    def _read(self, tag: str) -> str:
        for line in self.p.stdout:
            if line.startswith(tag):
                return line[len(tag):]
        raise RuntimeError(f"benchmark worker {self.name!r} exited (rc {self.p.wait()}) before {tag.strip()}")

    def run(self, start: int, count: int) -> dict:
        self.p.stdin.write(f"{start} {count}\n")
        self.p.stdin.flush()
        return json.loads(self._read(DONE))

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write("quit\n")
                self.p.stdin.flush()
            except BrokenPipeError:
                pass
            self.p.wait(timeout=60)


class Pool:
    """Workers started one after another (each builds/compiles alone), then measured interleaved."""

    def __init__(self, specs: dict):
        self.workers = {}
        try:
            for name, (argv, threads) in specs.items():
                self.workers[name] = Worker(name, argv, threads)
        except BaseException:
            self.close()
            raise

    def measure(self, rounds: int, per_round: int, warmup: int = 1) -> dict:
        """{name: {"s": total seconds over rounds*per_round units, "n": units, "round_s": seconds of each round,
        "last": last value, "values": every measured unit's value in order, **info}}."""
        for w in self.workers.values():
            if warmup:
                w.run(0, warmup)
        tot = {k: 0.0 for k in self.workers}
        per = {k: [] for k in self.workers}
        last, values = {}, {k: [] for k in self.workers}
        for r in range(rounds):
            for k, w in self.workers.items():
                res = w.run(warmup + r * per_round, per_round)
                tot[k] += res["s"]
                per[k].append(res["s"])
                last[k] = res["last"]
                values[k] += res["values"]
        return {k: {"s": tot[k], "n": rounds * per_round, "round_s": per[k], "last": last[k], "values": values[k],
                    **w.info}
                for k, w in self.workers.items()}

    def close(self):
        for w in self.workers.values():
            w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
