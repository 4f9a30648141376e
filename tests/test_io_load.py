"""jaxlm.io.load_model: one loader for every checkpoint format; errors that name the path; an acyclic package graph
with kernels/ a leaf."""

import ast
import dataclasses
import functools
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import preset
from jaxlm.errors import CheckpointError, ConfigError, JaxlmError
from jaxlm.io import checkpoint_format, load_model, save_pretrained
from jaxlm.io.load import CheckpointNotFoundError
from jaxlm.io.tokenizer import ByteTokenizer
from jaxlm.models.decoder import DecoderLM

ROOT = pathlib.Path(__file__).resolve().parents[1]


def random_model(ctor, seed=0):
    """A model with random weights, built without running its initializers (seconds faster on CPU)."""
    gdef, state = nnx.split(nnx.eval_shape(ctor))
    rng = np.random.default_rng(seed)
    flat = []
    for p, v in nnx.to_flat_state(state):
        a = v.get_value()
        x = (rng.standard_normal(a.shape) * 0.1).astype(a.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else \
            np.zeros(a.shape, a.dtype)
        flat.append((p, v.replace(jnp.asarray(x))))
    return nnx.merge(gdef, nnx.from_flat_state(flat))


@pytest.fixture(scope="module")
def tiny():
    return random_model(lambda: DecoderLM(preset("smollm2-tiny"), rngs=nnx.Rngs(0)))


def _same_logits(a, b):
    """Bit-identical state (every parameter and quantized buffer), which implies identical logits."""
    fa, fb = (dict(nnx.to_flat_state(nnx.state(m))) for m in (a, b))
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k].get_value()), np.asarray(fb[k].get_value()), err_msg=str(k))


def test_hf_dir_with_its_tokenizer(tiny, tmp_path):
    save_pretrained(tiny, tmp_path, tokenizer=ByteTokenizer())
    model, cfg, tok = load_model(tmp_path)
    assert checkpoint_format(tmp_path) == "hf" and cfg == tiny.cfg and isinstance(tok, ByteTokenizer)
    _same_logits(model, tiny)
    assert load_model(tmp_path, tokenizer=False)[2] is None
    with pytest.raises(ConfigError, match=r"option\(s\) \['step'\] do not apply to a decoder HF checkpoint"):
        load_model(tmp_path, step=3)


def test_orbax_run_dir_latest_and_given_step(tiny, tmp_path):
    """The layout jaxlm.train writes: <run>/config.json (the run config, NOT an HF config) + checkpoints/<step>/."""
    from jaxlm.train.checkpoint import Checkpointer
    from jaxlm.train.state import TrainState

    run = tmp_path / "run"
    ck = Checkpointer(run / "checkpoints", save_every=1, async_save=False)
    params = nnx.to_pure_dict(nnx.state(tiny, nnx.Param))
    zero = {k: v for k, v in params.items()}
    zero["embed"] = jnp.zeros_like(params["embed"])
    for step, p in ((2, zero), (5, params)):
        state = TrainState(params=p, opt_state={"mu": jnp.zeros(2)}, step=jnp.int32(step), rng=jnp.zeros(2, jnp.uint32))
        ck.save(step, state, {"next_index": 0}, {"compat": {"model": dataclasses.asdict(tiny.cfg)}})
    ck.close()
    (run / "config.json").write_text(json.dumps({"name": "tiny-run", "model": {}}))
    assert checkpoint_format(run) == "run"
    model, cfg, tok = load_model(run)
    assert cfg == tiny.cfg and tok is None
    _same_logits(model, tiny)
    early, _, _ = load_model(run, step=2)
    assert float(jnp.abs(early.embed[...]).max()) == 0.0
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 4 under .*checkpoints; have \[2, 5\]"):
        load_model(run, step=4)


def test_quantized_dir(tiny, tmp_path):
    from jaxlm.quant import QuantLinear, quantize, save_quantized

    cfg = preset("smollm2-tiny", hidden_size=64, num_heads=4, num_kv_heads=4, head_dim=16, intermediate_size=64,
                 num_layers=1)  # every linear 64x64: one quantization compile
    q = random_model(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    quantize(q, bits=4, group_size=32)
    save_quantized(q, tmp_path)
    model, got, tok = load_model(tmp_path)
    assert checkpoint_format(tmp_path) == "quantized" and got == cfg and tok is None
    assert isinstance(model.layers.attn.q, QuantLinear)
    _same_logits(model, q)


def test_mamba2_and_phi_mamba_dirs(tmp_path):
    from jaxlm.io.mamba_hf import save_mamba2, save_phi_mamba
    from jaxlm.models.mamba2 import Mamba2LM, mamba2_preset
    from jaxlm.models.phi_mamba import PhiMambaLM, phi_mamba_preset

    m2 = random_model(lambda: Mamba2LM(mamba2_preset("mamba2-tiny"), rngs=nnx.Rngs(1)))
    save_mamba2(m2, tmp_path / "m2")
    model, cfg, _ = load_model(tmp_path / "m2")
    assert isinstance(model, Mamba2LM) and cfg == m2.cfg
    _same_logits(model, m2)
    pm = random_model(lambda: PhiMambaLM(phi_mamba_preset("phi-mamba-tiny"), rngs=nnx.Rngs(2)))
    save_phi_mamba(pm, tmp_path / "pm")
    model, cfg, _ = load_model(tmp_path / "pm")
    assert isinstance(model, PhiMambaLM) and cfg.d_state == pm.cfg.d_state and cfg.attn_layers == ()
    _same_logits(model, pm)


def test_gguf_dispatch(tmp_path, monkeypatch):
    import jaxlm.io.gguf as gguf_io

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    seen = {}

    def fake(path, **kw):
        seen.update(path=path, **kw)
        return "model", "cfg", "tok"

    monkeypatch.setattr(gguf_io, "load_gguf", fake)
    assert checkpoint_format(f) == "gguf"
    assert load_model(f, dtype="bfloat16") == ("model", "cfg", "tok")
    assert seen == {"path": f, "dtype": "bfloat16"}
    assert load_model(f, tokenizer=False)[2] is None
    with pytest.raises(ConfigError, match=r"\['family'\] do not apply to a GGUF file"):
        load_model(f, family="phi")


def test_unreadable_paths_name_the_path_and_what_was_expected(tmp_path):
    cases = [(tmp_path / "nowhere", "no such file or directory"), (tmp_path, "neither an HF checkpoint"),
             (tmp_path / "notes.txt", "a file that is not .gguf")]
    (tmp_path / "notes.txt").write_text("hi")
    for path, why in cases:
        with pytest.raises(CheckpointNotFoundError) as e:
            load_model(path)
        msg = str(e.value)
        assert str(path) in msg and why in msg and "expected a .gguf file" in msg and "orbax training run" in msg
        assert isinstance(e.value, JaxlmError) and isinstance(e.value, FileNotFoundError)
    from jaxlm.io import load_pretrained

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"m.gguf is a GGUF file.*jaxlm.load_model"):
        load_pretrained(tmp_path / "m.gguf")  # the HF reader no longer reaches into gguf (no hf <-> gguf cycle)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: invalid JSON"):
        load_model(tmp_path)


# ---------------------------------------------------------------------------------------------- import graph
def _node(mod: str, root: pathlib.Path) -> str | None:
    """The graph node of a dotted module name: 'jaxlm.<sub>' (a subpackage or top-level module) or 'kernels'."""
    parts = mod.split(".")
    if parts[0] == "kernels":
        return "kernels"
    if parts[0] != "jaxlm":
        return None
    if len(parts) == 1:
        return "jaxlm"
    sub = parts[1]
    return f"jaxlm.{sub}" if (root / "jaxlm" / sub).is_dir() or (root / "jaxlm" / f"{sub}.py").exists() else "jaxlm"


def _module_level_imports(tree):
    """Imports executed when the module is imported: top-level statements, including those under if / try / with
    and class bodies, not function bodies."""
    todo = list(tree.body)
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            yield n
        elif not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(c for c in ast.iter_child_nodes(n) if isinstance(c, ast.stmt))


def _parse(f: pathlib.Path):
    return _parse_text(f.read_text(), str(f))


@functools.lru_cache(maxsize=None)
def _parse_text(text: str, name: str):
    return ast.parse(text, name)


def imports_of(f: pathlib.Path, root: pathlib.Path, module_level: bool = True) -> set[str]:
    """Dotted names a file imports (relative imports resolved; `from jaxlm import x` -> 'jaxlm.x')."""
    rel = f.relative_to(root).with_suffix("")
    pkg = list(rel.parts[:-1])
    tree = _parse(f)
    nodes = _module_level_imports(tree) if module_level else (n for n in ast.walk(tree)
                                                               if isinstance(n, (ast.Import, ast.ImportFrom)))
    out = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
            continue
        mod = n.module or ""
        if n.level:
            mod = ".".join(pkg[: len(pkg) - n.level + 1] + ([mod] if mod else []))
        out.update([f"{mod}.{a.name}" for a in n.names] if mod == "jaxlm" else [mod])
    return out


def package_graph(root: pathlib.Path, module_level: bool = True) -> dict[str, set[str]]:
    """{node: nodes it imports} over jaxlm/ and kernels/ under `root` (nodes as in `_node`)."""
    graph: dict[str, set[str]] = {}
    for f in sorted(list((root / "jaxlm").rglob("*.py")) + list((root / "kernels").rglob("*.py"))):
        rel = f.relative_to(root).with_suffix("")
        me = _node(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts), root)
        deps = {_node(t, root) for t in imports_of(f, root, module_level)}
        graph.setdefault(me, set()).update(d for d in deps if d is not None and d != me)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    color, stack = {}, []

    def visit(u):
        color[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if color.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if color.get(v) is None and (c := visit(v)):
                return c
        color[u] = 2
        stack.pop()
        return None

    for u in sorted(graph):
        if color.get(u) is None and (c := visit(u)):
            return c
    return None


def test_package_graph_is_acyclic_and_kernels_is_a_leaf():
    g = package_graph(ROOT)
    assert find_cycle(g) is None, f"import cycle among jaxlm subpackages: {' -> '.join(find_cycle(g))}"
    # edges that must exist (the graph is really built) and directions that must hold
    assert "kernels" in g["jaxlm.quant"] and "jaxlm.io" in g["jaxlm.train"] and "jaxlm.io" in g["jaxlm.infer"]
    every = package_graph(ROOT, module_level=False)  # function-level imports too
    assert find_cycle(every) is None, f"import cycle (counting lazy imports): {' -> '.join(find_cycle(every))}"
    assert every["kernels"] == set(), f"kernels/ imports {every['kernels']}"
    assert "jaxlm.train" not in every["jaxlm.infer"], "jaxlm.infer must not import jaxlm.train"
    io = {m: imports_of(ROOT / "jaxlm" / "io" / f"{m}.py", ROOT, module_level=False) for m in ("hf", "tokenizer")}
    assert "jaxlm.io.gguf" not in io["hf"], "hf <-> gguf cycle: jaxlm/io/hf.py imports jaxlm.io.gguf"
    assert not {t for t in io["tokenizer"] if t.startswith("jaxlm.io")}, io["tokenizer"]


def test_cycle_finder_finds_an_injected_cycle(tmp_path):
    for d, body in (("jaxlm/a", "from jaxlm.b.x import f\n"), ("jaxlm/b", "import numpy\n"),
                    ("kernels", "def g():\n    import jaxlm.a\n")):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "__init__.py").write_text(body)
    (tmp_path / "jaxlm" / "__init__.py").write_text("")
    (tmp_path / "jaxlm" / "b" / "x.py").write_text("def f():\n    from jaxlm import a\n")
    assert find_cycle(package_graph(tmp_path)) is None  # b -> a only inside a function
    assert package_graph(tmp_path, module_level=False)["kernels"] == {"jaxlm.a"}
    (tmp_path / "jaxlm" / "b" / "x.py").write_text("from jaxlm import a\n\ndef f():\n    pass\n")
    assert find_cycle(package_graph(tmp_path)) == ["jaxlm.a", "jaxlm.b", "jaxlm.a"]
