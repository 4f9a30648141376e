"""State-space mixers: the Mamba-2 mixer (HF `Mamba2Mixer`) and the discrete Mamba-2 mixer of MOHAWK / Phi-Mamba.

Both mixers share one core: a depthwise causal conv over [x | B | C], a split into heads, the SSD recurrence
(`kernels.ssd`) and a per-head D skip. They differ in the projection layout, the step size and the output path:

  Mamba-2 (HF): in_proj -> [z | xBC | dt]; xBC -> conv -> SiLU; dt = clamp(softplus(dt + dt_bias), time_step_limit);
      decay exp(dt * -exp(A_log)); x scaled by dt; B/C shared by `n_groups` groups of heads;
      y = SSD + D x; y = gated RMSNorm(y, z) (gate before norm); out_proj.
  Discrete Mamba-2 (MOHAWK): in_proj -> [xBC | z | A_log]; conv with no activation; B/C per head;
      decay exp(-softplus(A_log_t)); x NOT scaled; y = SSD + D x; out_proj(y * silu(z + z_bias)); no norm.

Every mixer offers a full-sequence forward (chunked SSD, optional incoming state), a single-token recurrent `step`
(constant memory: conv state [B, K-1, conv_dim] + SSM state [B, H, P, N]) and `transfer_matrix`, the materialized
[B, H, T, T] mixing matrix M with y_i = sum_j M[i, j] x_j (x = post-conv x; D on the diagonal; gate and out_proj
excluded), which MOHAWK stage 1 matches to attention probabilities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.errors import ConfigError
from jaxlm.nn.linear import Linear, param
from jaxlm.sharding import multi_device_mesh
from kernels.ssd import expand_groups, segsum, ssd, ssd_step

_ACTS = {"silu": jax.nn.silu, "swish": jax.nn.silu, "identity": lambda v: v, None: lambda v: v}


def causal_conv1d(x, weight, bias=None, state=None):
    """Depthwise causal conv. x [B, T, C], weight [K, C], bias [C] or None, state [B, K-1, C] (previous inputs) or None.

    out[t] = sum_k weight[k] * xp[t + k] with xp = concat(state or zeros, x). Returns (out [B, T, C] float32,
    new_state [B, K-1, C] = the last K-1 inputs)."""
    k = weight.shape[0]
    b, t, c = x.shape
    x = x.astype(jnp.float32)
    if state is None:
        state = jnp.zeros((b, k - 1, c), jnp.float32)
    xp = jnp.concatenate([state.astype(jnp.float32), x], axis=1)
    w = weight.astype(jnp.float32)
    out = sum(w[i] * xp[:, i:i + t] for i in range(k))
    if bias is not None:
        out = out + bias.astype(jnp.float32)
    return out, xp[:, t:]


def gated_rms_norm(y, z, weight, eps: float, group_size: int | None = None):
    """HF MambaRMSNormGated: weight * RMSNorm(y * silu(z)) (gate BEFORE the norm), variance over groups of
    `group_size` channels (None = the whole width, ungrouped). Computed in float32."""
    h = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
    d = h.shape[-1]
    gs = d if group_size is None else int(group_size)
    if d % gs:
        raise ConfigError(f"gated RMSNorm: width {d} is not a multiple of group_size={gs}")
    hg = h.reshape(h.shape[:-1] + (d // gs, gs))
    hg = hg * jax.lax.rsqrt(jnp.mean(hg * hg, axis=-1, keepdims=True) + eps)
    return weight.astype(jnp.float32) * hg.reshape(h.shape)


def mixing_matrix(a, B, C, D=None, x_scale=None):
    """Materialized SSD mixing matrix [b, h, T, T]: M[i, j] = (C_i . B_j) exp(sum_{k=j+1..i} a_k) * x_scale_j for
    j <= i, 0 above the diagonal, plus D[h] on the diagonal. a [b, T, h]; B/C [b, T, g, n]; x_scale [b, T, h]."""
    h = a.shape[-1]
    B, C = expand_groups(B, h).astype(jnp.float32), expand_groups(C, h).astype(jnp.float32)
    L = jnp.exp(segsum(jnp.moveaxis(a.astype(jnp.float32), 1, 2)))  # [b, h, T, T]
    M = jnp.einsum("bihn,bjhn->bhij", C, B) * L
    if x_scale is not None:
        M = M * jnp.moveaxis(x_scale.astype(jnp.float32), 1, 2)[:, :, None, :]
    if D is not None:
        t = a.shape[1]
        M = M + D.astype(jnp.float32)[None, :, None, None] * jnp.eye(t, dtype=jnp.float32)
    return M


class _SSMMixer(nnx.Module):
    """Shared machinery; subclasses define `_project(u) -> (xBC_raw, extra)` and `_params(xBC, extra)`."""

    conv_act = None

    def _split_heads(self, xBC):
        b, t, _ = xBC.shape
        x, Bm, Cm = jnp.split(xBC, [self.d_inner, self.d_inner + self.bc_groups * self.d_state], axis=-1)
        return (x.reshape(b, t, self.num_heads, self.head_dim), Bm.reshape(b, t, self.bc_groups, self.d_state),
                Cm.reshape(b, t, self.bc_groups, self.d_state))

    def init_state(self, batch: int, dtype=jnp.float32):
        """Zero (conv_state [B, K-1, conv_dim], ssm_state [B, H, P, N])."""
        return (jnp.zeros((batch, self.conv_kernel - 1, self.conv_dim), dtype),
                jnp.zeros((batch, self.num_heads, self.head_dim, self.d_state), jnp.float32))

    def _conv(self, xBC, conv_state=None):
        bias = None if self.conv_bias is None else self.conv_bias[...]
        out, new_state = causal_conv1d(xBC, self.conv_weight[...], bias, conv_state)
        return _ACTS[self.conv_act](out), new_state

    def _ssm_inputs(self, u, conv_state=None):
        """u [B, T, d_model] -> (x [B,T,H,P], a [B,T,H], B, C, x_scale [B,T,H] or None, gate, new_conv_state)."""
        xBC, extra = self._project(u)
        xBC, new_conv = self._conv(xBC, conv_state)
        x, Bm, Cm = self._split_heads(xBC)
        a, x_scale, gate = self._params(extra)
        return x, a, Bm, Cm, x_scale, gate, new_conv

    def __call__(self, u, state=None, *, impl: str | None = None, return_state: bool = False):
        """Full-sequence forward. u [B, T, d_model]; state = (conv_state, ssm_state) or None. impl: the SSD path
        (None = `kernels.ssd`'s dispatcher: the Pallas kernel on GPU; on CPU the sequential scan forward with the
        chunked backward).
        Returns out [B, T, d_model] (and the new state when return_state or a state is given)."""
        conv_state, ssm_state = (None, None) if state is None else state
        x, a, Bm, Cm, x_scale, gate, new_conv = self._ssm_inputs(u, conv_state)
        xs = x if x_scale is None else x * x_scale[..., None]
        y, final = ssd(xs, a, Bm, Cm, self.chunk_size, ssm_state, impl=impl, sharded=multi_device_mesh())
        y = y + self.D[...].astype(jnp.float32)[:, None] * x
        out = self._output(y, gate)
        if return_state or state is not None:
            return out, (new_conv.astype(jnp.float32), final)
        return out

    def step(self, u, state):
        """One token: u [B, d_model] (or [B, 1, d_model]), state -> (out [B, d_model], new state). O(1) memory."""
        squeeze = u.ndim == 2
        u3 = u[:, None] if squeeze else u
        conv_state, ssm_state = state
        x, a, Bm, Cm, x_scale, gate, new_conv = self._ssm_inputs(u3, conv_state)
        h = self.num_heads
        x0 = x[:, 0]
        xs = x0 if x_scale is None else x0 * x_scale[:, 0, :, None]
        y, new_ssm = ssd_step(ssm_state, xs, a[:, 0], expand_groups(Bm, h)[:, 0], expand_groups(Cm, h)[:, 0])
        y = y + self.D[...].astype(jnp.float32)[:, None] * x0
        out = self._output(y[:, None], gate)
        return (out[:, 0] if squeeze else out), (new_conv.astype(jnp.float32), new_ssm)

    def transfer_matrix(self, u):
        """[B, H, T, T] mixing matrix of this mixer on input u (D on the diagonal; gate/out_proj excluded)."""
        _, a, Bm, Cm, x_scale, _, _ = self._ssm_inputs(u)
        return mixing_matrix(a, Bm, Cm, self.D[...], x_scale)

    def post_conv_x(self, u):
        """The x (after conv, split into heads) that the mixing matrix multiplies: [B, T, H, P]."""
        return self._ssm_inputs(u)[0]


class Mamba2Mixer(_SSMMixer):
    """HF `Mamba2Mixer`. Parameters: in_proj [d, d_inner + conv_dim + H], conv_weight [K, conv_dim], conv_bias,
    dt_bias [H], A_log [H], D [H], norm_weight [d_inner], out_proj [d_inner, d]."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, state_size: int, n_groups: int = 1,
                 conv_kernel: int = 4, chunk_size: int = 256, eps: float = 1e-5, use_bias: bool = False,
                 use_conv_bias: bool = True, time_step_limit=(0.0, float("inf")), activation: str = "silu",
                 norm_group_size: int | None = None, init_std: float = 0.02, dtype=jnp.float32,
                 param_dtype=jnp.float32, *, rngs: nnx.Rngs):
        if num_heads % n_groups:
            raise ConfigError(f"num_heads={num_heads} is not a multiple of n_groups={n_groups}")
        self.num_heads, self.head_dim, self.d_state, self.bc_groups = num_heads, head_dim, state_size, n_groups
        self.d_inner = num_heads * head_dim
        self.conv_dim = self.d_inner + 2 * n_groups * state_size
        self.conv_kernel, self.chunk_size, self.eps = conv_kernel, chunk_size, eps
        self.time_step_limit = (float(time_step_limit[0]), float(time_step_limit[1]))
        self.conv_act = activation
        self.norm_group_size = norm_group_size
        kw = dict(std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_proj = Linear(hidden_size, self.d_inner + self.conv_dim + num_heads, ("embed", None),
                              bias=use_bias, **kw)
        self.conv_weight = param(rngs, (conv_kernel, self.conv_dim), (None, None), 0.2, param_dtype)
        self.conv_bias = param(None, (self.conv_dim,), (None,), dtype=param_dtype, init="zeros") \
            if use_conv_bias else None
        # HF init: A = 1..H, D = 1, dt in [1e-3, 1e-1] (log-uniform) stored as inverse softplus
        self.A_log = nnx.Param(jnp.log(jnp.arange(1, num_heads + 1, dtype=jnp.float32)).astype(param_dtype),
                               axes=(None,))
        dt = jnp.exp(jax.random.uniform(rngs.params(), (num_heads,)) * (jnp.log(0.1) - jnp.log(1e-3)) + jnp.log(1e-3))
        self.dt_bias = nnx.Param((dt + jnp.log(-jnp.expm1(-dt))).astype(param_dtype), axes=(None,))
        self.D = param(None, (num_heads,), (None,), dtype=param_dtype, init="ones")
        self.norm_weight = param(None, (self.d_inner,), (None,), dtype=param_dtype, init="ones")
        self.out_proj = Linear(self.d_inner, hidden_size, (None, "embed"), bias=use_bias, **kw)
        self.out_dtype = dtype

    def _project(self, u):
        p = self.in_proj(u)
        z, xBC, dt = jnp.split(p, [self.d_inner, self.d_inner + self.conv_dim], axis=-1)
        return xBC, (z, dt)

    def _params(self, extra):
        z, dt = extra
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))
        dt = jnp.clip(dt, self.time_step_limit[0], self.time_step_limit[1])
        A = -jnp.exp(self.A_log[...].astype(jnp.float32))
        return dt * A, dt, z

    def _output(self, y, gate):
        b, t = y.shape[:2]
        y = gated_rms_norm(y.reshape(b, t, self.d_inner), gate, self.norm_weight[...], self.eps,
                           self.norm_group_size)
        return self.out_proj(y.astype(self.out_dtype))


class DiscreteMamba2Mixer(_SSMMixer):
    """The discrete Mamba-2 mixer of MOHAWK / Phi-Mamba (`modules/mixers/discrete_mamba2.py`).

    Parameters: in_proj [d, 2*d_inner + 2*H*N + H] (no bias unless `bias`), z_bias [d_inner], conv_weight [K, conv_dim],
    conv_bias, D [H], out_proj [d_inner, d]. B and C are per head (H groups)."""

    def __init__(self, hidden_size: int, num_heads: int, state_size: int, expand: int = 1, conv_kernel: int = 4,
                 conv_bias: bool = True, chunk_size: int = 128, bias: bool = False, activation: str = "identity",
                 init_std: float = 0.02, dtype=jnp.float32, param_dtype=jnp.float32, *, rngs: nnx.Rngs):
        self.d_inner = int(expand * hidden_size)
        if self.d_inner % num_heads:
            raise ConfigError(f"d_inner={self.d_inner} is not a multiple of num_heads={num_heads}")
        self.num_heads, self.head_dim, self.d_state, self.bc_groups = (num_heads, self.d_inner // num_heads,
                                                                       state_size, num_heads)
        self.conv_dim = self.d_inner + 2 * num_heads * state_size
        self.conv_kernel, self.chunk_size = conv_kernel, chunk_size
        self.conv_act = activation
        kw = dict(std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_proj = Linear(hidden_size, self.conv_dim + self.d_inner + num_heads, ("embed", None), bias=bias,
                              **kw)
        self.z_bias = param(None, (self.d_inner,), (None,), dtype=param_dtype, init="zeros")
        self.conv_weight = param(rngs, (conv_kernel, self.conv_dim), (None, None), 0.2, param_dtype)
        self.conv_bias = param(None, (self.conv_dim,), (None,), dtype=param_dtype, init="zeros") \
            if conv_bias else None
        self.D = param(None, (num_heads,), (None,), dtype=param_dtype, init="ones")
        self.out_proj = Linear(self.d_inner, hidden_size, (None, "embed"), bias=bias, **kw)
        self.out_dtype = dtype

    def _project(self, u):
        p = self.in_proj(u)
        xBC, z, a_log = jnp.split(p, [self.conv_dim, self.conv_dim + self.d_inner], axis=-1)
        return xBC, (z, a_log)

    def _params(self, extra):
        z, a_log = extra
        return -jax.nn.softplus(a_log.astype(jnp.float32)), None, z

    def _output(self, y, gate):
        b, t = y.shape[:2]
        y = y.reshape(b, t, self.d_inner)
        g = jax.nn.silu(gate.astype(jnp.float32) + self.z_bias[...].astype(jnp.float32))
        return self.out_proj((y * g).astype(self.out_dtype))

    def set_identity_conv(self):
        """MOHAWK init: make the causal conv the identity (last tap 1, others 0, bias 0)."""
        k = self.conv_kernel
        w = jnp.zeros_like(self.conv_weight[...]).at[k - 1].set(1.0)
        self.conv_weight[...] = w
        if self.conv_bias is not None:
            self.conv_bias[...] = jnp.zeros_like(self.conv_bias[...])


__all__ = ["causal_conv1d", "gated_rms_norm", "mixing_matrix", "Mamba2Mixer", "DiscreteMamba2Mixer"]
