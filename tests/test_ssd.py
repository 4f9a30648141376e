"""SSD kernels and state-space mixers: chunked == sequential scan, the Pallas kernels (interpret mode) == the scan
forward and gradients (the backward kernels), CUDA cross-lowering of all four kernels, the dispatcher and its
fallbacks, conv/state plumbing, recurrent step == forward, materialized mixing matrices reproduce the mixer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.nn.ssd import DiscreteMamba2Mixer, Mamba2Mixer, causal_conv1d, gated_rms_norm, mixing_matrix
from jaxlm.errors import ConfigError, ShapeError
from kernels.ssd import resolve_impl, ssd, ssd_chunked, ssd_pallas, ssd_scan, use_impl
import kernels.ssd as kss
from kernels.ssd import pallas as ssd_kernel


def _inputs(b=2, t=37, h=4, p=8, n=5, g=2, seed=0):
    r = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
    a = -jnp.asarray(r.uniform(0.0, 1.5, size=(b, t, h)), jnp.float32)
    return f(b, t, h, p), a, f(b, t, g, n), f(b, t, g, n), f(b, h, p, n)


@pytest.mark.parametrize("t,chunk", [(37, 8), (32, 8), (5, 16), (1, 4)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_scan(t, chunk, with_state):
    x, a, B, C, s0 = _inputs(t=t)
    s0 = s0 if with_state else None
    y_ref, f_ref = ssd_scan(x, a, B, C, s0)
    y, f = jax.jit(ssd_chunked, static_argnums=4)(x, a, B, C, chunk, s0)
    assert y.shape == x.shape and f.shape == (2, 4, 8, 5)
    np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(f, f_ref, atol=2e-5, rtol=1e-5)


def test_chunked_splits_compose_and_chunk_size_free():
    """Running two halves with the carried state == one pass; results do not depend on the chunk size."""
    x, a, B, C, s0 = _inputs(t=40)
    f_ssd = jax.jit(ssd, static_argnums=4)
    y, f = f_ssd(x, a, B, C, 16, s0)
    # split at 20: both halves end in a partial chunk (16 + 4) and share one compiled shape
    y1, f1 = f_ssd(x[:, :20], a[:, :20], B[:, :20], C[:, :20], 16, s0)
    y2, f2 = f_ssd(x[:, 20:], a[:, 20:], B[:, 20:], C[:, 20:], 16, f1)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y, atol=2e-5)
    np.testing.assert_allclose(f2, f, atol=2e-5)
    for q in (7, 64):
        np.testing.assert_allclose(f_ssd(x, a, B, C, q, s0)[0], y, atol=2e-5)
    with pytest.raises(ValueError, match="impl"):
        ssd(x, a, B, C, 16, impl="pallas-nope")


def test_causal_conv_state_and_gated_norm():
    r = np.random.default_rng(1)
    x = jnp.asarray(r.normal(size=(2, 11, 6)), jnp.float32)
    w, bias = jnp.asarray(r.normal(size=(4, 6)), jnp.float32), jnp.asarray(r.normal(size=(6,)), jnp.float32)
    full, st = causal_conv1d(x, w, bias)
    # numpy oracle: out[t, c] = sum_k w[k, c] * x[t - 3 + k, c] (zeros before t = 0)
    xp = np.concatenate([np.zeros((2, 3, 6)), np.asarray(x)], 1)
    ref = sum(np.asarray(w)[k] * xp[:, k:k + 11] for k in range(4)) + np.asarray(bias)
    np.testing.assert_allclose(full, ref, atol=1e-5)
    np.testing.assert_allclose(st, x[:, -3:])
    a, s = causal_conv1d(x[:, :2], w, bias)  # shorter than the kernel
    b, _ = causal_conv1d(x[:, 2:], w, bias, s)
    np.testing.assert_allclose(jnp.concatenate([a, b], 1), full, atol=1e-5)

    y, z, wt = (jnp.asarray(r.normal(size=s), jnp.float32) for s in ((3, 8), (3, 8), (8,)))
    h = np.asarray(y) * (np.asarray(z) / (1 + np.exp(-np.asarray(z))))  # gate BEFORE the norm
    ung = np.asarray(wt) * h / np.sqrt((h ** 2).mean(-1, keepdims=True) + 1e-5)
    hg = h.reshape(3, 2, 4)
    grp = np.asarray(wt) * (hg / np.sqrt((hg ** 2).mean(-1, keepdims=True) + 1e-5)).reshape(3, 8)
    np.testing.assert_allclose(gated_rms_norm(y, z, wt, 1e-5), ung, atol=1e-5)
    np.testing.assert_allclose(gated_rms_norm(y, z, wt, 1e-5, 4), grp, atol=1e-5)


def _mixers():
    m2 = Mamba2Mixer(32, num_heads=4, head_dim=16, state_size=8, n_groups=2, conv_kernel=4, chunk_size=8,
                     rngs=nnx.Rngs(3))
    dm = DiscreteMamba2Mixer(32, num_heads=4, state_size=8, chunk_size=8, rngs=nnx.Rngs(4))
    r = np.random.default_rng(5)
    for m in (m2, dm):
        m.D[...] = jnp.asarray(1 + 0.3 * r.normal(size=4), jnp.float32)
        m.conv_bias[...] = jnp.asarray(0.1 * r.normal(size=m.conv_dim), jnp.float32)
        m.in_proj.kernel[...] = m.in_proj.kernel[...] * 8.0
    return m2, dm


@pytest.mark.parametrize("which", [0, 1], ids=["mamba2", "discrete"])
def test_step_equals_forward_and_matrix_reproduces_mixer(which):
    m = _mixers()[which]
    u = jnp.asarray(np.random.default_rng(6).normal(size=(2, 13, 32)), jnp.float32)
    gdef, state = nnx.split(m)

    @jax.jit
    def everything(state, u):
        mm = nnx.merge(gdef, state)
        full = mm(u, impl="chunked")  # the CPU default is the scan (compared below)
        # prefill 5 tokens with the chunked path, then one token at a time with the recurrent step
        out, st = mm(u[:, :5], mm.init_state(2))

        def one_token(st, u_t):  # a scan: the step is compiled once, not unrolled 8 times
            o, st = mm.step(u_t, st)
            return st, o

        st, outs = jax.lax.scan(one_token, st, jnp.moveaxis(u[:, 5:], 1, 0))
        M = mm.transfer_matrix(u)
        y = jnp.einsum("bhij,bjhp->bihp", M, mm.post_conv_x(u))
        stepped = jnp.concatenate([out, jnp.moveaxis(outs, 0, 1)], 1)
        return full, stepped, st, mm(u, impl="scan"), M, mm._output(y, mm._ssm_inputs(u)[5])

    full, stepped, st, scanned, M, via_matrix = everything(state, u)
    np.testing.assert_allclose(stepped, full, atol=2e-5, rtol=1e-5)
    assert st[0].shape == (2, 3, m.conv_dim) and st[1].shape == (2, 4, m.head_dim, 8)
    np.testing.assert_allclose(scanned, full, atol=2e-5, rtol=1e-5)
    # y = M x (+ gate/norm/out_proj) must reproduce the mixer output
    assert M.shape == (2, 4, 13, 13)
    assert float(jnp.abs(jnp.triu(M, 1)).max()) == 0.0
    np.testing.assert_allclose(via_matrix, full, atol=2e-5, rtol=1e-5)


def test_mixing_matrix_entries():
    """M[i, j] = (C_i . B_j) prod_{k=j+1..i} exp(a_k) (+ D on the diagonal), checked entry by entry."""
    _, a, B, C, _ = _inputs(b=1, t=6, h=2, g=2)
    D = jnp.asarray([0.5, -1.0])
    M = np.asarray(mixing_matrix(a, B, C, D))
    an, Bn, Cn = (np.asarray(v) for v in (a, B, C))
    for h in range(2):
        for i in range(6):
            for j in range(6):
                want = 0.0 if j > i else Cn[0, i, h] @ Bn[0, j, h] * np.exp(an[0, j + 1:i + 1, h].sum())
                want += float(D[h]) if i == j else 0.0
                assert abs(M[0, h, i, j] - want) < 1e-5, (h, i, j)


@pytest.mark.parametrize("g,chunk,bwd_chunk,with_state,forward", [(2, 16, 64, True, "sequential"),
                                                                   (1, 32, 16, False, "parallel")],
                         ids=["gqa2-state", "g1-bwdchunk16-parallel"])
def test_pallas_kernel_forward_and_gradients_match_scan(g, chunk, bwd_chunk, with_state, forward):
    """Interpret mode, forward and the backward kernels against jax.grad of the sequential scan: T = 40 is not a
    multiple of the chunk (tail padding), 4 heads over 2 groups (or 1: every head shares B/C), a carried state (its
    gradient too) or none, the backward on its own chunk size (16 with a forward chunk of 32: 3 chunks), the
    sequential and the parallel forward."""
    r = np.random.default_rng(7)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
    x, B, C, s0 = f(2, 40, 4, 16), f(2, 40, g, 16), f(2, 40, g, 16), f(2, 4, 16, 16)
    a = -jnp.asarray(r.uniform(0.0, 1.5, size=(2, 40, 4)), jnp.float32)
    wy, wf = f(2, 40, 4, 16), f(2, 4, 16, 16)
    s0 = s0 if with_state else None

    def loss(fn):
        def go(x, a, B, C, s0):
            y, fin = fn(x, a, B, C, s0)
            return jnp.sum(y * wy) + jnp.sum(fin * wf), (y, fin)
        return jax.value_and_grad(go, argnums=(0, 1, 2, 3, 4) if with_state else (0, 1, 2, 3), has_aux=True)

    kernel = lambda x, a, B, C, s0, bwd="pallas": ssd_pallas(x, a, B, C, chunk, s0, interpret=True,
                                                             bwd_chunk=bwd_chunk, forward=forward, bwd=bwd)
    xla_bwd = with_state  # once: the Pallas forward with XLA's chunked backward (what "auto" takes on GPU)
    both = jax.jit(lambda *v: (loss(kernel)(*v), loss(ssd_scan)(*v),
                               loss(functools.partial(kernel, bwd="xla"))(*v) if xla_bwd else None))
    ((_, (y, fin)), g), ((_, (yr, finr)), gr), g_xla = both(x, a, B, C, s0)
    if xla_bwd:
        for name, got, want in zip(("x", "a", "B", "C", "initial_state"), g_xla[1], gr):
            np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4, err_msg=f"bwd=xla d{name}")
    np.testing.assert_allclose(y, yr, atol=3e-5, rtol=1e-5)
    np.testing.assert_allclose(fin, finr, atol=3e-5, rtol=1e-5)
    assert len(g) == (5 if with_state else 4)
    for name, got, want in zip(("x", "a", "B", "C", "initial_state"), g, gr):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4, err_msg=f"d{name}")


def test_pallas_kernels_cross_lower_for_cuda():
    """The real Pallas -> Triton lowering for an H100, on this CPU machine: every forward and backward kernel
    (through jax.grad); the sequential forward in f32 with a carried state, the parallel one in bf16, grouped,
    without one."""
    bwd = ("ssd_local_states", "ssd_state_scan", "ssd_bwd_chunk_grads")
    for text, fwd in ((ssd_kernel.cross_lower(1, 256, 4, 64, 1, 64, 64, backward=True).as_text(), "ssd_chunked"),
                      (ssd_kernel.cross_lower(2, 100, 4, 32, 2, 16, 32, dtype=jnp.bfloat16, with_state=False,
                                              backward=True, forward="parallel").as_text(), "ssd_chunk_outputs")):
        assert "triton" in text.lower()
        assert all(n in text for n in (fwd,) + bwd), [n for n in (fwd,) + bwd if n not in text]


def test_auto_dispatch_on_gpu_falls_back(monkeypatch):
    """On a GPU backend, "auto" takes the kernel only for shapes and dtypes it supports (else the XLA chunked path);
    forcing "pallas" on bad input raises a ShapeError naming the shape or dtype."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    ok, f32, bf16 = ((2, 64, 4, 16), (2, 64, 2, 16)), jnp.float32, jnp.bfloat16
    # the Pallas forward with XLA's backward until benchmarks/gpu_suite.py has run the backward kernels on a device
    assert resolve_impl(None, *ok, 16, dtype=(f32, bf16)) == "pallas_fwd"
    assert resolve_impl("pallas", *ok, 16) == "pallas"  # explicit: forward and backward kernels
    seen, xo, ao, Bo, Co = [], *_inputs(t=64, p=16, n=16)[:4]
    with monkeypatch.context() as m:
        m.setattr(kss, "ssd_pallas", lambda *v, **kw: seen.append(kw["bwd"]))
        ssd(xo, ao, Bo, Co, 16)
        ssd(xo, ao, Bo, Co, 16, impl="pallas")
    assert seen == ["xla", "pallas"]
    assert resolve_impl(None, *ok, 16, sharded=True) == "chunked"
    assert resolve_impl(None, *ok, 16, dtype=(jnp.int32, f32)) == "chunked"
    assert resolve_impl(None, (2, 64, 4, 24), ok[1], 16) == "chunked"  # P = 24
    assert resolve_impl(None, *ok, 48) == "chunked"  # chunk 48
    x, a, B, C, _ = _inputs(t=20, p=16, n=16)
    with pytest.raises(ShapeError, match=r"dtype int32 \(x shape \(2, 20, 4, 16\)"):
        ssd(x.astype(jnp.int32), a, B, C, 16, impl="pallas")
    with pytest.raises(ShapeError, match="bwd_chunk=24"):
        ssd_pallas(x, a, B, C, 16, bwd_chunk=24)
    with pytest.raises(ConfigError, match="forward='fast'"):
        ssd_pallas(x, a, B, C, 16, forward="fast")
    with pytest.raises(ConfigError, match="bwd='cuda'"):
        ssd_pallas(x, a, B, C, 16, bwd="cuda")


def test_dispatcher_and_bad_shapes():
    x, a, B, C, s0 = _inputs(t=20, p=8, n=5)
    assert resolve_impl(None, x.shape, B.shape, 16) == "hybrid"  # CPU default: scan forward, chunked backward
    with pytest.raises(ShapeError, match=r"head_dim P=8 \(x shape \(2, 20, 4, 8\)\)"):
        ssd(x, a, B, C, 16, impl="pallas")
    with pytest.raises(ConfigError, match="impl='cuda'"):
        ssd(x, a, B, C, 16, impl="cuda")
    x, a, B, C, s0 = _inputs(t=20, p=16, n=16)
    with pytest.raises(ShapeError, match="chunk size 8"):
        ssd(x, a, B, C, 8, impl="pallas")
    with use_impl("interpret"):  # read at trace time
        run = jax.jit(lambda *v: (ssd(*v[:4], 16, v[4]), ssd_scan(*v)))
        (y, f), (y_ref, f_ref) = run(x, a, B, C, s0)
    np.testing.assert_allclose(y, y_ref, atol=3e-5)
    np.testing.assert_allclose(f, f_ref, atol=3e-5)
    # the CPU default's gradients are the chunked algorithm's (whose gradients == the scan's: the kernel test above)
    total = lambda fn: jax.grad(lambda *v: sum(jnp.sum(o * o) for o in fn(*v)), argnums=(0, 1, 2, 3, 4))
    g_h, g_s = jax.jit(lambda *v: (total(lambda *u: ssd(*u[:4], 8, u[4]))(*v),
                                   total(lambda *u: ssd_chunked(*u[:4], 8, u[4]))(*v)))(x, a, B, C, s0)
    for got, want in zip(g_h, g_s):
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
