"""python -m recipes.concepts: the concept-learning benchmark on CPU (issue 14, docs/concepts.md).

Parts (each prints its table as it finishes; --parts picks some):
  synthetic   structure recovery per preset graph, oracle and sampled (--ns, --seeds), ours vs the linear
              baseline (the paper's table shape), and the rank tests' type-I error
  networks    the bnlearn networks bundled with pgmpy, internal nodes hidden (real tables), oracle and sampled
  learner     the NNX bottom-level concept learner (shared engine) vs the linear baseline on x = g(d, c)
  probes      a small diffusion model on concept images: linear probes across noise levels, condition switching,
              early vs late perturbation (plot: <out>/probes.png)

Writes <out>/results.json and <out>/tables.md; --record appends the tables to BENCHMARKS.md (benchmarks/record.py).
--quick: tiny sizes (a smoke run of every part in about a minute).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

PARTS = ("synthetic", "networks", "learner", "probes")


def _say(msg):
    print(f"[concepts {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def md_table(head, rows) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def part_synthetic(a):
    from jaxlm.concepts.experiment import calibration, run_synthetic, table

    rows = run_synthetic(None, a.ns, tuple(range(a.seeds)), boost=a.boost)
    cal = calibration(draws=a.calib_draws)
    cal_md = md_table(["test", "independence null (rank 0)", "latent-class null (rank 2)"],
                      [[m, f"{cal[(m, 'rank0')]:.3f}", f"{cal[(m, 'rank2')]:.3f}"] for m in ("bartlett", "robust", "svd")])
    return {"rows": rows, "calibration": {f"{m}/{r}": v for (m, r), v in cal.items()}}, \
        table(rows) + f"\n\nType-I error at α = 0.05, n = 1000, {a.calib_draws} null draws:\n\n" + cal_md


def _score(truth, fn):
    from jaxlm.concepts import NotIdentifiable, structure_scores

    try:
        return dict(structure_scores(truth, fn().to_dag()), ni="")
    except NotIdentifiable as e:
        return dict(structure_scores(truth, None), ni=e.reason)


def part_networks(a):
    import numpy as np

    from jaxlm.concepts import (NETWORKS, check_conditions, learn_from_samples, learn_linear_baseline, learn_oracle,
                                load_network, minimal_graph)

    out, lines = [], []
    cases = [(n, 0) for n in (a.networks or NETWORKS)] + [(n, 2) for n in a.measured]
    for name, measure in cases:
        bn = load_network(name, measure=measure)
        g = bn.graph
        truth = minimal_graph(g)
        obs = g.observed_idx
        cards, names = [g.card[i] for i in obs], [g.names[i] for i in obs]
        x = bn.sample_observed(a.net_n, np.random.default_rng(0))
        res = {"oracle ours": _score(truth, lambda: learn_oracle(bn)),
               "oracle base": _score(truth, lambda: learn_linear_baseline(bn)),
               f"{a.net_n} ours": _score(truth, lambda: learn_from_samples(x, cards, names)),
               f"{a.net_n} base": _score(truth, lambda: learn_linear_baseline(x, cards, names))}
        label = name if not measure else f"{name} (all hidden, {measure} measurements each)"
        out.append({"network": label, "nodes": g.n, "observed": len(obs), "violations": len(check_conditions(g)),
                    "results": res})
        cell = lambda r: f"{r['f1']:.2f}" + (" (NI)" if r["ni"] else "")  # noqa: E731
        lines.append([label, g.n, len(obs), len(truth.latent_idx), len(check_conditions(g))]
                     + [cell(r) for r in res.values()] + [next((r["ni"] for r in res.values() if r["ni"]), "")[:90]])
        _say(f"network {label}: " + ", ".join(f"{k} {cell(r)}" for k, r in res.items()))
    head = ["network", "nodes", "observed", "latents (minimal)", "condition violations", *out[0]["results"],
            "first NotIdentifiable reason"]
    return out, md_table(head, lines)


def part_learner(a):
    import numpy as np

    from jaxlm.concepts import (DiscreteBN, concept_scores, encode_concepts, linear_concept_baseline,
                                mix_observations, preset, train_concept_learner)

    out, lines = [], []
    for name in a.learner_graphs:
        g = preset(name)
        cards = [g.card[i] for i in g.observed_idx]
        for seed in range(a.learner_seeds):
            bn = DiscreteBN.random(g, np.random.default_rng(seed), boost=a.boost)
            d = bn.sample_observed(a.learner_n, np.random.default_rng(100 + seed))
            x, _ = mix_observations(d, cards, np.random.default_rng(200 + seed), nuisance_scale=0.5)
            n_tr = int(0.8 * len(x))
            t0 = time.perf_counter()
            model, res = train_concept_learner(x[:n_tr], cards, steps=a.learner_steps, seed=seed, relax="softmax",
                                               sharpen=0.3, beta=0.1, progress=False)
            secs = time.perf_counter() - t0
            ours = concept_scores(d[n_tr:], encode_concepts(model, x[n_tr:]))
            base = concept_scores(d[n_tr:], linear_concept_baseline(x[n_tr:], cards, seed=seed))
            out.append({"graph": name, "seed": seed, "ours": ours, "baseline": base, "train_seconds": secs,
                        "final_loss": res.losses[a.learner_steps - 1]})
            lines.append([name, seed, len(cards), f"{ours['mean_acc']:.3f}", f"{ours['mean_nmi']:.3f}",
                          f"{base['mean_acc']:.3f}", f"{base['mean_nmi']:.3f}", f"{ours['chance']:.3f}",
                          " ".join(f"{r['acc']:.2f}" for r in ours["per_concept"]), f"{secs:.0f}"])
            _say(f"learner {name} seed {seed}: ours acc {ours['mean_acc']:.3f} vs linear {base['mean_acc']:.3f} "
                 f"(chance {ours['chance']:.3f}), {secs:.0f} s")
    head = ["graph", "seed", "concepts", "ours matched acc", "ours NMI", "linear acc", "linear NMI", "chance",
            "ours per concept", "train s"]
    return out, md_table(head, lines)


def part_probes(a, out_dir: Path):
    import numpy as np

    from jaxlm.concepts.probes import (CONCEPTS, concept_classifiers, concept_images, perturb_at, probe_accuracy,
                                       switch_condition, train_probe_diffusion)

    x, codes, _ = concept_images(a.probe_n, np.random.default_rng(0))
    n_tr = a.probe_n * 2 // 3
    t0 = time.perf_counter()
    model, task, res = train_probe_diffusion(x[:n_tr], codes[:n_tr, 0], steps=a.probe_steps, hidden=a.probe_hidden)
    _say(f"probe diffusion trained: {a.probe_steps} steps in {time.perf_counter() - t0:.0f} s, "
         f"loss {res.losses[0]:.3f} -> {res.losses[a.probe_steps - 1]:.3f}")
    T = task.cfg.num_steps
    ts = sorted(set(int(round(v)) for v in np.linspace(0, T - 1, a.probe_levels)))
    acc = probe_accuracy(model, task, x[n_tr:], codes[n_tr:], ts)
    cls = concept_classifiers(x[:n_tr], codes[:n_tr])
    sw = switch_condition(model, task, cls, n=a.probe_samples, steps=a.sample_steps)
    pt = perturb_at(model, task, cls, n=a.probe_samples, steps=a.sample_steps)
    by = {(r["t"], r["concept"]): r for r in acc}
    acc_md = md_table(["t", "SNR"] + [f"{c} x_t / feat" for c in CONCEPTS],
                      [[t, f"{by[(t, CONCEPTS[0])]['snr']:.3g}"]
                       + [f"{by[(t, c)]['acc_xt']:.2f} / {by[(t, c)]['acc_feat']:.2f}" for c in CONCEPTS] for t in ts]
                      + [["chance", ""] + [f"{by[(ts[0], c)]['chance']:.2f}" for c in CONCEPTS]])
    sw_md = md_table(["switch after DDIM step", "t at switch", "share with the new shape", "low-level kept"],
                     [[r["switch_step"], r["t_switch"], f"{r['share_b']:.2f}", f"{r['kept_low']:.2f}"] for r in sw])
    pt_md = md_table(["perturbed at DDIM step", "t", "changed-area ratio", "shape changed", "a low-level concept changed"],
                     [[r["step"], r["t"], f"{r['changed_area']:.3f}", f"{r['shape_changed']:.2f}",
                       f"{r['low_changed']:.2f}"] for r in pt])
    _plot(acc, sw, pt, ts, out_dir / "probes.png")
    return {"accuracy": acc, "switch": sw, "perturb": pt, "train_loss": [res.losses[0], res.losses[a.probe_steps - 1]]}, \
        f"(a) linear-probe accuracy (test images) from x_t and from the denoiser's last hidden layer:\n\n{acc_md}\n\n" \
        f"(b) condition switching (shape 0 -> shape 1, guidance 3, {a.sample_steps} DDIM steps):\n\n{sw_md}\n\n" \
        f"(c) perturbation sized to the noise level at one step (unconditional DDIM):\n\n{pt_md}"


def _plot(acc, sw, pt, ts, path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    from jaxlm.concepts.probes import CONCEPTS

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for c in CONCEPTS:
        ax[0].plot(ts, [next(r["acc_xt"] for r in acc if r["t"] == t and r["concept"] == c) for t in ts], marker="o",
                   label=c)
    ax[0].set(xlabel="noise level t", ylabel="probe accuracy from x_t", title="(a) concepts vs noise")
    ax[0].legend()
    ax[1].plot([r["t_switch"] for r in sw], [r["share_b"] for r in sw], marker="o", label="new shape")
    ax[1].plot([r["t_switch"] for r in sw], [r["kept_low"] for r in sw], marker="s", label="low-level kept")
    ax[1].set(xlabel="t at the switch", title="(b) switching the condition")
    ax[1].legend()
    ax[2].plot([r["t"] for r in pt], [r["changed_area"] for r in pt], marker="o", label="changed area")
    ax[2].plot([r["t"] for r in pt], [r["shape_changed"] for r in pt], marker="s", label="shape changed")
    ax[2].set(xlabel="t of the perturbation", title="(c) early vs late perturbation")
    ax[2].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    from jaxlm.cli import command_parser

    ap = command_parser("recipes.concepts", __doc__,
                        reads="nothing but the machine: synthetic discrete hierarchies it samples, and the bnlearn "
                              "networks' BIF files that ship inside the pgmpy package",
                        writes="--out/tables.md, results.json and probes.png (the tables are printed too); with "
                               "--record, rows in BENCHMARKS.md")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to run")
    ap.add_argument("--out", default="runs/concepts", help="output directory")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--record", action="store_true", help="append the tables to BENCHMARKS.md")
    ap.add_argument("--ns", default="1000,5000,20000", help="sample sizes of the synthetic structure table")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per setting")
    ap.add_argument("--boost", type=float, default=4.0, help="signal boost of the sampled hierarchies")
    a = ap.parse_args(argv)
    parts = [p for p in a.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"--parts: unknown {bad}; choose from {list(PARTS)}")
    a.ns = tuple(int(v) for v in a.ns.split(",") if v)
    q = a.quick
    if q:
        a.ns, a.seeds = (2000,), 1
    a.calib_draws = 40 if q else 200
    a.net_n = 2000 if q else 20000
    a.measured = () if q else ("cancer", "earthquake", "survey")
    a.networks = ("cancer", "sachs", "alarm") if q else None
    a.learner_graphs = ("latent_chain",) if q else ("tree", "latent_chain", "cross_level")
    a.learner_seeds, a.learner_n, a.learner_steps = (1, 2000, 100) if q else (2, 20000, 3000)
    a.probe_n, a.probe_steps, a.probe_hidden = (600, 50, 64) if q else (6000, 3000, 384)
    a.probe_levels, a.probe_samples, a.sample_steps = (3, 16, 5) if q else (9, 256, 50)

    import jax

    jax.config.update("jax_platforms", os.environ.get("JAX_PLATFORMS", "cpu"))
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, md = {}, {}
    t_all = time.perf_counter()
    for p in parts:
        t0 = time.perf_counter()
        _say(f"part {p} ...")
        res, text = part_probes(a, out_dir) if p == "probes" else globals()[f"part_{p}"](a)
        results[p], md[p] = res, text
        _say(f"part {p} done in {time.perf_counter() - t0:.0f} s\n{text}\n")
    load = os.getloadavg()[0]
    stamp = (f"{time.strftime('%Y-%m-%d', time.gmtime())}, {'quick' if q else 'full'} run, "
             f"{time.perf_counter() - t_all:.0f} s on 2 shared CPU cores under load (load average {load:.1f} at the end)")
    tables = f"Run: {stamp}.\n\n" + "\n\n".join(f"### {p}\n\n{md[p]}" for p in parts) + "\n"
    (out_dir / "tables.md").write_text(tables)
    (out_dir / "results.json").write_text(json.dumps({"stamp": stamp, **results}, indent=1, default=str))
    _say(f"wrote {out_dir / 'tables.md'} and {out_dir / 'results.json'}")
    if a.record:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks.record import record

        record("Concept learning (issue 14)",
               "Kong et al. 2024 reproduction (docs/concepts.md): structure-recovery F1 per graph (ours vs the linear "
               "baseline), rank-test calibration, bnlearn networks, the neural bottom-level learner and diffusion "
               "probes, from `python -m recipes.concepts --record`.",
               f"### {stamp}\n\n" + "\n\n".join(f"#### {p}\n\n{md[p]}" for p in parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
