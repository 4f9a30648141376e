"""Noise schedules (pure functions of T) and the frozen `Schedule` pytree of derived DDPM quantities.

Indexing: timesteps are 0-based, t = 0 .. T-1; `alphas_cumprod[t]` is ᾱ_t = ∏_{s<=t} (1 - β_s). The clean data sits
"before" t = 0 (ᾱ = 1); samplers write that level as t = -1.

- constant:       β_t = beta (EDDPM/DiLED's constant 0.008)
- linear:         Ho et al. 2020, β from 1e-4 to 0.02, both scaled by 1000/T (Nichol & Dhariwal 2021's scaling)
- cosine:         Nichol & Dhariwal 2021, ᾱ(t) = cos²(((t/T)+s)/(1+s) · π/2), β_t = min(1 - ᾱ(t+1)/ᾱ(t), 0.999)
- scaled_linear:  Stable Diffusion, β = linspace(√0.00085, √0.012, T)²
- zero_terminal_snr: Lin et al. 2024 Algorithm 1, rescales √ᾱ so that ᾱ_{T-1} = 0 while keeping ᾱ_0
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import ConfigError

SCHEDULES = ("constant", "linear", "cosine", "scaled_linear")


def _check_T(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps <= 0:
        raise ConfigError(f"num_steps={num_steps!r}: the number of diffusion steps T must be a positive integer")
    return int(num_steps)


def constant_betas(num_steps: int, beta: float = 0.008) -> np.ndarray:
    T = _check_T(num_steps)
    if not 0.0 < beta < 1.0:
        raise ConfigError(f"beta={beta!r}: a constant schedule needs 0 < beta < 1")
    return np.full((T,), beta, np.float64)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02, scale_to_T: bool = True) -> np.ndarray:
    """DDPM's linear schedule; with scale_to_T both ends are multiplied by 1000/T (so T=1000 is unchanged)."""
    T = _check_T(num_steps)
    scale = 1000.0 / T if scale_to_T else 1.0
    lo, hi = scale * beta_start, scale * beta_end
    if not 0.0 < lo <= hi < 1.0:
        raise ConfigError(f"beta_start={lo!r}, beta_end={hi!r} (after scaling to num_steps={T}): need 0 < start <= "
                          "end < 1 (for small T pass scale_to_T=False)")
    return np.linspace(lo, hi, T, dtype=np.float64)


def cosine_alphas_cumprod_fn(t, s: float = 0.008):
    """ᾱ(t) for t in [0, 1] before normalisation: cos²((t + s) / (1 + s) · π/2)."""
    return np.cos((np.asarray(t, np.float64) + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021 eq. 17: β_t = min(1 - ᾱ((t+1)/T) / ᾱ(t/T), max_beta)."""
    T = _check_T(num_steps)
    i = np.arange(T, dtype=np.float64)
    f = cosine_alphas_cumprod_fn
    return np.minimum(1.0 - f((i + 1) / T, s) / f(i / T, s), max_beta)


def scaled_linear_betas(num_steps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    """Stable Diffusion's schedule: linear in √β."""
    T = _check_T(num_steps)
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=np.float64) ** 2


def rescale_zero_terminal_snr(betas) -> np.ndarray:
    """Lin et al. 2024, Algorithm 1: shift and scale √ᾱ so the last step has SNR 0 and the first keeps its SNR."""
    betas = np.asarray(betas, np.float64)
    if betas.shape[0] < 2:
        raise ConfigError(f"zero_terminal_snr needs num_steps >= 2, got {betas.shape[0]}")
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    a0, aT = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - aT) * a0 / (a0 - aT)
    ab = sqrt_ab ** 2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def make_betas(name: str, num_steps: int, *, zero_terminal_snr: bool = False, **kwargs) -> np.ndarray:
    """Betas (float64 numpy, shape [T]) of a named schedule; kwargs go to the schedule function."""
    fns = {"constant": constant_betas, "linear": linear_betas, "cosine": cosine_betas,
           "scaled_linear": scaled_linear_betas}
    if name not in fns:
        raise ConfigError(f"schedule={name!r}: unknown noise schedule; expected one of {list(fns)}")
    try:
        betas = fns[name](num_steps, **kwargs)
    except TypeError as e:  # an unknown keyword for this schedule
        raise ConfigError(f"schedule={name!r}: {e}") from None
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


_FIELDS = ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
           "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
           "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
           "posterior_mean_coef1", "posterior_mean_coef2")


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """Derived DDPM quantities, each a float32 array [T] (computed in float64). A pytree: pass it into jit.

    posterior q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, posterior_variance_t) (Ho et al. eq. 6-7);
    posterior_log_variance_clipped replaces the t = 0 entry (variance 0) by the t = 1 one, as Ho et al.'s code does.
    sqrt_recip_alphas_cumprod is inf where ᾱ = 0 (zero terminal SNR): there ε cannot give x_0, use v or x_0.
    """
    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    log_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    def snr(self, t=None):
        """Signal-to-noise ratio ᾱ / (1 - ᾱ), at t or for every step."""
        ab = self.alphas_cumprod if t is None else self.alphas_cumprod[t]
        return ab / (1.0 - ab)

    @classmethod
    def from_betas(cls, betas) -> "Schedule":
        b = np.asarray(betas, np.float64)
        if b.ndim != 1 or b.shape[0] == 0:
            raise ConfigError(f"betas: expected a non-empty 1-D array, got shape {b.shape}")
        if not np.all((b > 0) & (b <= 1)):
            raise ConfigError("betas: every beta must lie in (0, 1]")
        a = 1.0 - b
        ab = np.cumprod(a)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        with np.errstate(divide="ignore"):
            pv = b * (1.0 - ab_prev) / (1.0 - ab)
            log_pv = np.log(np.concatenate([pv[1:2], pv[1:]]) if b.shape[0] > 1 else np.maximum(pv, 1e-20))
            vals = dict(
                betas=b, alphas=a, alphas_cumprod=ab, alphas_cumprod_prev=ab_prev,
                sqrt_alphas_cumprod=np.sqrt(ab), sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ab),
                log_one_minus_alphas_cumprod=np.log(1.0 - ab), sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ab),
                sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ab - 1.0), posterior_variance=pv,
                posterior_log_variance_clipped=log_pv,
                posterior_mean_coef1=b * np.sqrt(ab_prev) / (1.0 - ab),
                posterior_mean_coef2=(1.0 - ab_prev) * np.sqrt(a) / (1.0 - ab))
        return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in vals.items()})


jax.tree_util.register_dataclass(Schedule, data_fields=list(_FIELDS), meta_fields=[])


def make_schedule(name: str, num_steps: int, *, zero_terminal_snr: bool = False, **kwargs) -> Schedule:
    """`Schedule` of a named beta schedule: make_schedule("cosine", 1000, zero_terminal_snr=False)."""
    return Schedule.from_betas(make_betas(name, num_steps, zero_terminal_snr=zero_terminal_snr, **kwargs))


SPACINGS = ("leading", "linspace", "trailing")


def sampling_timesteps(num_steps: int, steps: int, spacing: str = "leading") -> np.ndarray:
    """The decreasing path [t_0 > t_1 > ... > t_{S-1}, -1] a sampler walks (S = steps; -1 is the clean level).

    leading:  DDIM (Song et al. 2021): t = 0, T/S, 2T/S, ... (integer stride); never visits t = T-1 unless S = T
    linspace: round(linspace(0, T-1, S))
    trailing: Lin et al. 2024 Table 2: round(arange(T, 0, -T/S)) - 1, always starts at t = T-1 (use with zero SNR)
    steps == T gives the full DDPM chain T-1, ..., 0 for every spacing.
    """
    T = _check_T(num_steps)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 0 < steps <= T:
        raise ConfigError(f"steps={steps!r}: the number of sampling steps must be an integer in [1, T={T}]")
    if spacing == "leading":
        ts = np.arange(0, steps) * (T // steps)
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
    elif spacing == "trailing":
        ts = np.round(T - np.arange(steps) * (T / steps)).astype(np.int64) - 1
    else:
        raise ConfigError(f"spacing={spacing!r}: unknown timestep spacing; expected one of {list(SPACINGS)}")
    return np.concatenate([np.sort(ts)[::-1], [-1]]).astype(np.int32)
