"""The shared Accelerate training loop, checkpointing and optimizer/schedule helpers."""

from hfssl.training.loop import ObjectiveModule, TrainingDivergedError, TrainResult, make_accelerator, train

__all__ = ["ObjectiveModule", "TrainResult", "TrainingDivergedError", "make_accelerator", "train"]
