"""Observability: a terminal progress bar, the metrics jsonl, the loss-curve PNG and the run summary."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

# bf16 dense peak FLOP/s per device, by jax device_kind substring (first match wins)
PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("GH200", 989e12), ("A100", 312e12), ("L4", 121e12),
              ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5", 197e12), ("TPU v4", 275e12))


def device_peak_flops(override_tflops: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s per device, where the number came from). On CPU it is measured with a matmul."""
    import jax

    if override_tflops:
        return override_tflops * 1e12, "given"
    d = jax.devices()[0]
    for key, val in PEAK_FLOPS:
        if key.lower() in d.device_kind.lower():
            return val, f"{d.device_kind} bf16 table"
    if d.platform == "cpu":
        return _measure_cpu_flops() / jax.device_count(), "measured CPU matmul / simulated devices"
    return float("nan"), "unknown device"


def _measure_cpu_flops() -> float:
    import jax
    import jax.numpy as jnp

    n = 512
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    a = jax.device_put(a, jax.local_devices()[0])
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "--:--"
    s = int(round(s))
    h, m = divmod(s, 3600)
    m, sec = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def fmt_num(x: float) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.1f}{unit}"
    return f"{x:.0f}"


class Progress:
    """One self-rewriting status line on a terminal; a plain log line every `log_every` steps otherwise."""

    def __init__(self, total: int, start: int = 0, log_every: int = 10, stream=None, enabled: bool | None = None):
        self.total, self.start, self.log_every = total, start, max(1, log_every)
        self.stream = stream or sys.stdout
        tty = hasattr(self.stream, "isatty") and self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.tty = tty if enabled is None else (enabled and tty)
        self.width = 24

    def update(self, step: int, phase: str, loss: float, tok_s: float, mfu: float, eta: float, force=False):
        done = step + 1
        frac = done / max(self.total, 1)
        n = int(frac * self.width)
        bar = "#" * n + "." * (self.width - n)
        mfu_s = f"{100 * mfu:.1f}%" if math.isfinite(mfu) else "--"
        tok_s = fmt_num(tok_s) if math.isfinite(tok_s) else "--"
        line = (f"{phase:<10} [{bar}] {done:>{len(str(self.total))}}/{self.total} loss {loss:7.4f} "
                f"| {tok_s} tok/s | MFU {mfu_s} | ETA {fmt_time(eta)}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            if done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif force or done % self.log_every == 0 or done == self.total or step == self.start:
            self.stream.write(line + "\n")
            self.stream.flush()

    def message(self, text: str):
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()


class MetricsLog:
    """Append-only jsonl; on resume, records the resumed run will write again are dropped first."""

    def __init__(self, path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # train records of steps before the resume point; evaluations taken at or before it (an eval's
            # step counts the updates it saw, so the eval at the checkpoint step stays)
            keep = [r for r in read_jsonl(self.path)
                    if r.get("step", 0) < resume_step or (r.get("kind") == "eval" and r.get("step", 0) <= resume_step)]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.f = open(self.path, "a")

    def write(self, record: dict):
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()

    def close(self):
        self.f.close()


def read_jsonl(path) -> list[dict]:
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a torn last line from a killed run
    return out


def phase_loss_summary(records: list[dict], bounds: list[tuple[int, int]], names: list[str]) -> list[dict]:
    """First and last loss of each phase (mean over the first/last 10% of its steps, at least 3)."""
    train = {r["step"]: r["loss"] for r in records if r.get("kind") == "train"}
    out = []
    for (a, b), name in zip(bounds, names):
        ls = [train[s] for s in range(a, b) if s in train]
        if not ls:
            continue
        k = max(3, len(ls) // 10)
        k = min(k, max(1, len(ls) // 2))
        first, last = sum(ls[:k]) / k, sum(ls[-k:]) / k
        out.append({"phase": name, "steps": [a, b], "loss_start": first, "loss_end": last,
                    "falling": bool(last < first)})
    return out


def plot_loss_curve(records: list[dict], bounds, names, path, title: str = "") -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    steps = [r["step"] for r in train]
    ax.plot(steps, [r["loss"] for r in train], lw=0.8, color="black", label="train loss")
    srcs = sorted({k[5:] for r in train for k in r if k.startswith("loss/")})
    for s in srcs:
        pts = [(r["step"], r[f"loss/{s}"]) for r in train if r.get(f"loss/{s}") is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, _smooth(ys), lw=0.8, alpha=0.8, label=f"train loss ({s}, smoothed)")
    for (a, _), name in zip(bounds, names):
        ax.axvline(a, ls="--", color="gray", lw=0.7)
        ax.text(a, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="gray")
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy (nats/token)")
    ax.legend(fontsize=8)
    ax.set_title(title or "training loss")
    ax = axes[1]
    esrc = sorted({k.split("/")[1] for r in evals for k in r if k.startswith("eval/") and k.endswith("/ppl")})
    for s in esrc:
        pts = [(r["step"], r[f"eval/{s}/ppl"]) for r in evals if f"eval/{s}/ppl" in r]
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=f"held-out {s}")
    for (a, _), _n in zip(bounds, names):
        ax.axvline(a, ls="--", color="gray", lw=0.7)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity")
    ax.set_title("held-out perplexity")
    if esrc:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _smooth(ys, k: int = 9):
    out, acc = [], []
    for y in ys:
        acc.append(y)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def time_now() -> float:
    return time.perf_counter()
