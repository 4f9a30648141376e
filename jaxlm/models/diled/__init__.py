"""DiLED / EDDPM (Liu et al., ICML 2024; code guangyliu/EDDPM): diffusion with a learnable encoder-decoder for
text, images and proteins. See docs/diled.md."""
from jaxlm.models.diled.autoencoders import (PROTEIN_ALPHABET, ImageAE, ImageAEConfig, ProteinAE, ProteinAEConfig,
                                             TextAE, TextAEConfig)
from jaxlm.models.diled.denoiser import MLPSkipNet, MLPSkipNetConfig
from jaxlm.models.diled.model import DiLED, DiLEDConfig, diled_config, diled_loss, loss_jit
from jaxlm.models.diled.objective import DiLEDLossConfig, combine, eddpm_schedule, latent_diffusion_loss
