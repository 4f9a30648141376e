"""Distillation: MOHAWK (Transformer -> state-space model in three stages)."""
from jaxlm.distill.mohawk import (kd_loss, layer_losses, make_optimizer, make_stage_step, student_config,
                                  teacher_targets, transfer_weights, truncate_teacher)
