"""Pandora (Xiang et al. 2024): a world model driven by free-text actions. World, data and evaluation:
jaxlm.pandora.world / sprites / babyai / pipeline / eval / idm (docs/pandora_world.md). The world model, its
training stages and rollout: jaxlm.pandora.model / qformer / video / task (docs/pandora.md)."""

from jaxlm.pandora.eval import copy_last_frame, evaluate, psnr, ssim  # noqa: F401
from jaxlm.pandora.pipeline import TransitionPipeline, frames_to_float, frames_to_uint8, heldout_batches  # noqa: F401
from jaxlm.config import PandoraConfig, pandora_preset  # noqa: F401
from jaxlm.pandora.model import WorldModel, build_world_model  # noqa: F401
from jaxlm.pandora.task import PandoraTask, load_world_model, stage_phase, stage_phases  # noqa: F401
from jaxlm.pandora.world import (HELDOUT_SEEDS, TRAIN_SEEDS, ActionError, Transition, World, check_frames,  # noqa: F401
                                 draw_train_seeds, make_world)

__all__ = ["ActionError", "Transition", "World", "make_world", "HELDOUT_SEEDS", "TRAIN_SEEDS", "draw_train_seeds",
           "check_frames", "TransitionPipeline", "heldout_batches", "frames_to_float", "frames_to_uint8",
           "evaluate", "copy_last_frame", "psnr", "ssim", "PandoraConfig", "pandora_preset", "WorldModel",
           "build_world_model", "PandoraTask", "load_world_model", "stage_phase", "stage_phases"]
