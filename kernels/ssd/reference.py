"""Sequential-scan oracle for the SSD recurrence (pure JAX, one step per token).

Recurrence (per batch b and head h; x already multiplied by the step size where the model has one):
    S_t = exp(a_t) * S_{t-1} + x_t B_t^T        S: [P, N]
    y_t = S_t C_t                               y: [P]
Shapes: x [B, T, H, P], a [B, T, H] (log-decays, <= 0), B/C [B, T, G, N] with G dividing H (head h uses group
h // (H // G)), initial_state [B, H, P, N] or None. Returns (y [B, T, H, P] float32, final_state [B, H, P, N]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def expand_groups(t, num_heads: int):
    """[B, T, G, N] -> [B, T, H, N] (head h reads group h // (H // G), as HF's repeat_interleave)."""
    g = t.shape[2]
    if num_heads % g:
        raise ValueError(f"number of heads {num_heads} is not a multiple of the number of groups {g}")
    return t if g == num_heads else jnp.repeat(t, num_heads // g, axis=2)


def ssd_step(state, x, a, B, C):
    """One recurrence step. state [B,H,P,N], x [B,H,P], a [B,H], B/C [B,H,N] -> (y [B,H,P], new state)."""
    state = jnp.exp(a)[..., None, None] * state + x[..., :, None] * B[..., None, :]
    y = jnp.einsum("bhpn,bhn->bhp", state, C)
    return y, state


def ssd_scan(x, a, B, C, initial_state=None):
    b, t, h, p = x.shape
    f32 = jnp.float32
    x, a = x.astype(f32), a.astype(f32)
    B, C = expand_groups(B, h).astype(f32), expand_groups(C, h).astype(f32)
    s0 = jnp.zeros((b, h, p, B.shape[-1]), f32) if initial_state is None else initial_state.astype(f32)

    def body(s, inp):
        y, s = ssd_step(s, *inp)
        return s, y

    xs = tuple(jnp.moveaxis(v, 1, 0) for v in (x, a, B, C))
    final, ys = jax.lax.scan(body, s0, xs)
    return jnp.moveaxis(ys, 0, 1), final
