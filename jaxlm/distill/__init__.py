"""Distillation: MOHAWK (Transformer -> state-space model in three stages), as Tasks of the shared engine."""
from jaxlm.distill.mohawk import (Distill, StageTask, kd_loss, layer_losses, stage_config, student_config,
                                  teacher_targets, trainable_filter, transfer_weights, truncate_teacher)
