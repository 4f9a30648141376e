"""The same forward sharded on 8 simulated devices (fsdp x tensor 4x2 and 8x1, data x fsdp x tensor 2x2x2)
equals the unsharded forward (tolerance 1e-5: only the reduction order changes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import preset
from jaxlm.errors import MeshError
from jaxlm.models import DecoderLM, KVCache
from jaxlm.sharding import check_mesh_for_model, logical_to_spec, make_mesh, parse_mesh, state_shardings, use_mesh


def _sharded_forward(model, ids, mesh_spec):
    mesh = make_mesh(mesh_spec)
    check_mesh_for_model(mesh, model.cfg, ids.shape[0])
    gdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    ids_sh = jax.NamedSharding(mesh, logical_to_spec(("batch", "length"), ids.shape, mesh))

    @jax.jit
    def fwd(st, x):
        with use_mesh(mesh):
            return nnx.merge(gdef, st)(x)

    out = fwd(state, jax.device_put(ids, ids_sh))
    return out, state


@pytest.mark.parametrize("name,mesh_spec", [
    ("smollm2-tiny", "4x2"), ("smollm2-tiny", "8x1"), ("smollm2-tiny", "2x2x2"), ("mobillama-tiny", "4x2"),
    ("mobillama-tiny", "8x1"), ("crystalcoder-tiny", "4x2"), ("phi-tiny", "2x2x2")])
def test_sharded_forward_equals_unsharded(name, mesh_spec):
    cfg = preset(name, num_heads=4, num_kv_heads=2 if name == "smollm2-tiny" else 4)
    model = DecoderLM(cfg, rngs=nnx.Rngs(3))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 16)), jnp.int32)
    want = np.asarray(model(ids))
    got, state = _sharded_forward(model, ids, mesh_spec)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
    # parameters really are distributed: the q projection is split over tensor (and fsdp) devices
    q = state["layers"]["attn"]["q"]["kernel"].get_value()
    t, f = parse_mesh(mesh_spec, 8)[2], parse_mesh(mesh_spec, 8)[1]
    assert q.sharding.shard_shape(q.shape) == (q.shape[0], q.shape[1] // f, q.shape[2] // t)


def test_sharded_decode_equals_unsharded():
    cfg = preset("smollm2-tiny")
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 256, (8, 6)), jnp.int32)
    mesh = make_mesh("4x2")
    gdef, state = nnx.split(model)
    state = jax.device_put(state, state_shardings(state, mesh))

    @jax.jit
    def step(st, x, cache):
        with use_mesh(mesh):
            return nnx.merge(gdef, st)(x, cache=cache)

    c1, c2 = KVCache.zeros(cfg, 8, 8), KVCache.zeros(cfg, 8, 8)
    a, c1 = step(state, ids[:, :5], c1)
    b, c1 = step(state, ids[:, 5:], c1)
    a2, c2 = model(ids[:, :5], cache=c2)
    b2, c2 = model(ids[:, 5:], cache=c2)
    np.testing.assert_allclose(np.asarray(b), np.asarray(b2), atol=1e-5)


def test_mesh_errors_name_the_flag():
    with pytest.raises(MeshError, match="needs 6 devices but 8"):
        make_mesh("3x2")
    with pytest.raises(MeshError, match="expected AxB"):
        parse_mesh("eight", 8)
    with pytest.raises(MeshError, match="does not divide"):
        parse_mesh("3x-1", 8)
    assert parse_mesh("-1x2", 8) == (1, 4, 2) and parse_mesh("2x2x2", 8) == (2, 2, 2)
    cfg = preset("smollm2-135m")  # 9 heads, 3 kv heads
    with pytest.raises(MeshError, match="tensor=2 does not divide num_heads=9"):
        check_mesh_for_model(make_mesh("4x2"), cfg)
    with pytest.raises(MeshError, match="batch size 6"):
        check_mesh_for_model(make_mesh("8x1"), preset("amber-tiny"), batch_size=6)


def test_pure_jitted_entry_points():
    from jaxlm.models import forward, forward_cached

    cfg = preset("phi-tiny")
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    gdef, state = nnx.split(model)
    ids = jnp.asarray(np.arange(12).reshape(2, 6) % 256, jnp.int32)
    full = forward(gdef, state, ids)
    np.testing.assert_allclose(np.asarray(full), np.asarray(model(ids)), atol=1e-6)
    lg, cache = forward_cached(gdef, state, ids[:, :5], KVCache.zeros(cfg, 2, 8))
    lg2, cache = forward_cached(gdef, state, ids[:, 5:], cache)
    np.testing.assert_allclose(np.asarray(lg2[:, 0]), np.asarray(full[:, 5]), atol=1e-5)
    assert cache.lengths.tolist() == [6, 6]


def test_one_mesh_parser_and_device_preparation():
    """jaxlm.sharding.mesh_dims is the one "--mesh" parser; prepare_devices sets the simulated CPU device count."""
    from jaxlm.sharding import mesh_device_count, mesh_dims, prepare_devices
    from jaxlm.train import distributed

    assert mesh_dims("8x1") == [1, 8, 1] and mesh_dims("2x2x2") == [2, 2, 2] and mesh_dims("-1x2") == [1, -1, 2]
    assert [mesh_device_count(s) for s in ("-1x1", "-1x2", "-1x3", "1x2", "2x2x2")] == [8, 8, 9, 2, 8]
    assert distributed.prepare_devices is prepare_devices  # old import path, same function
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert prepare_devices("2x1", env=env, force=True) == 2
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=2"
    assert prepare_devices("4x1", env=env, force=True) is None  # an explicit count (the user's) wins
    assert prepare_devices(None, env={}, force=True) is None  # no --mesh: nothing to prepare
    assert prepare_devices("4x1", env={}) is None  # jax is already imported here: too late, left alone
    for bad in ("eight", "2x0", "-1x-1", "1x2x3x4"):
        with pytest.raises(MeshError, match="--mesh"):
            prepare_devices(bad, env={}, force=True)
