"""Gaussian diffusion shared by every diffusion model: schedules, parametrizations, samplers, guidance, loss.

See docs/diffusion.md. Layers live in jaxlm.nn.conv (conv, GroupNorm, up/down-sampling, ResBlock) and
jaxlm.nn.time (timestep embeddings).
"""
from jaxlm.diffusion.guidance import cfg_combine, cfg_dropout, classifier_free_guidance
from jaxlm.diffusion.loss import diffusion_loss, sample_t
from jaxlm.diffusion.param import (PARAMETRIZATIONS, alpha_bar, convert, q_mean_variance, q_posterior, q_sample,
                                   target_from, v_target, x0_and_eps)
from jaxlm.diffusion.samplers import ddim_sample, ddpm_sample, sample
from jaxlm.diffusion.schedules import (SCHEDULES, Schedule, constant_betas, cosine_betas, linear_betas, make_betas,
                                       make_schedule, rescale_zero_terminal_snr, sampling_timesteps,
                                       scaled_linear_betas)
