"""Kill-and-resume: a run SIGKILLed mid-training and resumed reproduces the uninterrupted run bit for bit (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# 15 steps = three phases of 5, a checkpoint every 3: the kill lands in phase 2 and the resume starts mid-phase
STEPS, EVERY, KILL_AFTER = 15, 3, 8
ARGS = ["-m", "recipes.crystal", "--mesh", "8x1", "--steps", str(STEPS), "--no-progress", "--set",
        "train.seq_len=64", "--set", f"train.ckpt_every={EVERY}", "--set", "train.eval_batches=0", "--set",
        "train.keep_release=0"]


def _env(cache):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # the three runs share compiled programs (same executables)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _losses(run_dir) -> dict[int, float]:
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "train":
            out[r["step"]] = r["loss"]
    return out


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    env = _env(tmp_path / "xla")
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = subprocess.run([sys.executable, *ARGS, "--out", str(full)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    want = _losses(full)
    assert sorted(want) == list(range(STEPS))

    proc = subprocess.Popen([sys.executable, *ARGS, "--out", str(killed)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(json.loads(x).get("step", -1) >= KILL_AFTER for x in lines if x.strip().endswith("}")):
            break
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = _losses(killed)
    assert max(before) < STEPS - 1, "the run finished before the kill"

    r = subprocess.run([sys.executable, *ARGS, "--out", str(killed), "--resume"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    resumed_at = int(r.stdout.split("resumed from")[1].split("(step ")[1].split()[0])
    assert EVERY <= resumed_at <= KILL_AFTER + 1 and resumed_at % EVERY == 0
    got = _losses(killed)
    assert sorted(got) == list(range(STEPS))
    # every step after the resume point: exactly the uninterrupted run's loss (bit-identical floats)
    assert [got[s] for s in range(resumed_at, STEPS)] == [want[s] for s in range(resumed_at, STEPS)]
    assert [got[s] for s in range(resumed_at)] == [want[s] for s in range(resumed_at)]


@pytest.mark.slow
def test_two_process_cpu_run_matches_single_process(tmp_path):
    """Multi-host path on one machine: 2 processes x 4 CPU devices (jax.distributed + gloo), mesh 8x1, each process
    feeding its rows of the global batch and both writing the orbax checkpoints, gives the single-process losses."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    args = ["-m", "recipes.crystal", "--mesh", "8x1", "--steps", "6", "--no-progress", "--set", "train.seq_len=64",
            "--set", "train.eval_batches=1"]
    procs = []
    for i in range(2):
        env = _env(tmp_path / "xla")
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, *args, "--out", str(tmp_path / "multi")], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "summary" in outs[0] and "summary.json" not in outs[1]  # one writer
    r = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "single")], cwd=ROOT, env=_env(tmp_path / "xla"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    multi, single = _losses(tmp_path / "multi"), _losses(tmp_path / "single")
    assert sorted(multi) == list(range(6))
    for s in range(6):
        assert abs(multi[s] - single[s]) < 1e-4, (s, multi[s], single[s])
    assert sorted(int(p.name) for p in (tmp_path / "multi" / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6]
