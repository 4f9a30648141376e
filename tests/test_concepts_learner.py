"""The neural bottom-level concept learner (trained through the shared engine), its scores up to permutation, the
linear baseline, the bundled bnlearn networks (read offline) and the diffusion probes, all on tiny sizes."""

import socket

import numpy as np
import pytest

from jaxlm.concepts import (ConceptDataError, ConceptGraphError, DiscreteBN, NotIdentifiable, concept_scores,
                            encode_concepts, learn_oracle, linear_concept_baseline, load_network, mix_observations,
                            train_concept_learner)
from jaxlm.concepts.graphs import _spec
from jaxlm.concepts.learner import LearnerConfig


def test_concept_scores_are_invariant_to_slot_and_state_permutations():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, size=(400, 3))
    perm = true[:, [2, 0, 1]]                       # slots permuted
    perm[:, 0] = np.array([2, 0, 1])[perm[:, 0]]    # states of one slot relabelled
    s = concept_scores(true, perm)
    assert s["mean_acc"] == 1.0 and s["mean_ari"] == 1.0 and s["assignment"] == {0: 1, 1: 2, 2: 0}
    noisy = concept_scores(true, rng.integers(0, 3, size=(400, 3)))
    assert noisy["mean_acc"] < 0.5 and abs(noisy["mean_ari"]) < 0.05
    with pytest.raises(ConceptDataError, match="equal n"):
        concept_scores(true, perm[:10])


def test_linear_baseline_is_exact_when_each_concept_moves_x_along_its_own_direction():
    rng = np.random.default_rng(1)
    d = rng.integers(0, 2, size=(600, 2))
    x = np.concatenate([4.0 * d[:, :1], 1.5 * d[:, 1:], 0.05 * rng.normal(size=(600, 3))], 1)
    assert concept_scores(d, linear_concept_baseline(x, [2, 2]))["mean_acc"] == 1.0
    with pytest.raises(ConceptDataError, match="dim >= 3"):
        linear_concept_baseline(x[:, :2], [2, 2, 2])


def test_learner_trains_on_the_engine_and_beats_chance():
    g = _spec({"R": (2, ["a", "b", "c"])}, obs_card=2)
    bn = DiscreteBN.random(g, np.random.default_rng(0), boost=4)
    d = bn.sample_observed(1024, np.random.default_rng(1))
    x, _ = mix_observations(d, [2, 2, 2], np.random.default_rng(2), dim=12, nuisance_dim=1, nuisance_scale=0.2)
    model, res = train_concept_learner(x, [2, 2, 2], steps=40, batch=128, lr=2e-2, hidden=32, cont_dim=1,
                                       relax="softmax", sharpen=0.3, beta=0.1)
    assert res.losses[39] < 0.5 * res.losses[0]
    pred = encode_concepts(model, x)
    assert pred.shape == (1024, 3) and set(np.unique(pred)) <= {0, 1}
    s = concept_scores(d, pred)
    assert s["mean_acc"] > s["chance"] + 0.2, s  # 0.92 vs chance 0.62 (three binary concepts, one parent)


def test_learner_bad_input():
    with pytest.raises(ConceptDataError, match="at least 2 states"):
        LearnerConfig(dim=4, cards=(2, 1))
    with pytest.raises(ConceptDataError, match="relax"):
        LearnerConfig(dim=4, cards=(2,), relax="hard")
    with pytest.raises(ConceptDataError, match="non-finite"):
        train_concept_learner(np.full((8, 3), np.nan), [2], steps=1)


def test_bnlearn_network_loads_offline_with_real_tables(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("a bundled network must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    bn = load_network("asia")
    g = bn.graph
    assert g.n == 8 and sorted(g.names[i] for i in g.observed_idx) == ["dysp", "xray"]
    # a real expert table: P(lung = yes | smoke = yes) = 0.1 in the asia network
    lung, smoke = g.index("lung"), g.index("smoke")
    joint = bn.marginal([smoke, lung])
    assert np.isclose(joint.sum(), 1.0)
    with pytest.raises(NotIdentifiable, match="observed variables"):
        learn_oracle(bn)  # two observed leaves: the learner refuses instead of guessing
    m = load_network("cancer", measure=2)
    assert all(not m.graph.observed[i] for i in range(5)) and len(m.graph.observed_idx) == 10
    with pytest.raises(ConceptGraphError, match="no bundled bnlearn network"):
        load_network("nope")


@pytest.mark.slow
def test_bif_reader_agrees_with_pgmpy_on_every_bundled_network():
    import gzip

    from pgmpy.readwrite import BIFReader

    from jaxlm.concepts.networks import NETWORKS, network_file

    for name in NETWORKS:
        bn = load_network(name, hide=())
        model = BIFReader(string=gzip.open(network_file(name), "rt").read()).get_model()
        g = bn.graph
        for i, n in enumerate(g.names):
            cpd = model.get_cpds(n)
            ev = list(cpd.variables[1:])
            vals = np.moveaxis(np.asarray(cpd.values), 0, -1)
            np.testing.assert_allclose(np.transpose(vals, [ev.index(g.names[p]) for p in g.parents[i]] + [len(ev)]),
                                       bn.cpts[i], err_msg=f"{name}/{n}")


def test_probe_pieces_images_and_linear_probe():
    from jaxlm.concepts.probes import LinearProbe, _points, concept_images, render

    x, codes, _ = concept_images(200, np.random.default_rng(0))
    assert x.shape == (200, 144) and codes.shape == (200, 4)
    img = render(np.array([[0, 1, 0, 3]]), np.ones(1)).reshape(12, 12)
    assert (img[5:7, 1:11] == 1).all() and (img[10:12, 10:12] == 1).all() and img[0, 0] == -1  # bar rows 5-6, dot
    for j in range(4):  # every concept is linearly readable from the clean image
        assert LinearProbe().fit(x, codes[:, j]).score(x, codes[:, j]) == 1.0
    assert _points(50, 10) == [0, 1, 2, 3, 4, 7, 12, 19, 31, 50] and _points(5, 1) == [0]


@pytest.mark.slow
def test_diffusion_probes_run_end_to_end_on_a_tiny_model():
    from jaxlm.concepts.probes import (concept_classifiers, concept_images, perturb_at, probe_accuracy,
                                       switch_condition, train_probe_diffusion)

    x, codes, _ = concept_images(128, np.random.default_rng(0))
    assert x.shape == (128, 144) and codes.shape == (128, 4) and -1.3 < x.min() < x.max() < 1.3
    model, task, res = train_probe_diffusion(x, codes[:, 0], steps=5, batch=32, hidden=32, t_dim=16, num_steps=20)
    assert np.isfinite(res.losses[4])
    rows = probe_accuracy(model, task, x, codes, ts=[0, 19])
    clean = {r["concept"]: r["acc_xt"] for r in rows if r["t"] == 0}
    assert clean["shape"] == 1.0  # a linear probe reads the bar's orientation from the clean image
    cls = concept_classifiers(x, codes)
    sw = switch_condition(model, task, cls, n=8, steps=3, points=2)
    assert [r["switch_step"] for r in sw] == [0, 1, 3] and sw[-1]["kept_low"] == 1.0  # switching at the end = all a
    pt = perturb_at(model, task, cls, n=8, steps=3, points=1)
    assert [r["step"] for r in pt] == [0] and 0.0 < pt[0]["changed_area"] <= 1.0  # perturbing x_T changes x_0
    with pytest.raises(ConceptDataError, match="at least 20"):
        probe_accuracy(model, task, x[:30], codes[:30], ts=[0])


def test_recipe_writes_tables_and_records(tmp_path, monkeypatch):
    from recipes import concepts as recipe

    bench = tmp_path / "BENCHMARKS.md"
    monkeypatch.setenv("JAXLM_BENCHMARKS_MD", str(bench))
    assert recipe.main(["--quick", "--parts", "networks", "--out", str(tmp_path / "run"), "--record"]) == 0
    tables = (tmp_path / "run" / "tables.md").read_text()
    assert "| alarm | 37 | 11 |" in tables and "(NI)" in tables
    assert "## Concept learning (issue 14)" in bench.read_text()
    with pytest.raises(SystemExit):
        recipe.main(["--parts", "nope"])
