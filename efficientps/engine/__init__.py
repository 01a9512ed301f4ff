"""Training machinery: CPU/GPU launch, crash-safe checkpoints, a resumable sampler, the trainer."""

from .checkpoint import AtomicCheckpointer
from .launch import launch
from .sampler import ResumableTrainingSampler
from .trainer import EfficientPSTrainer

__all__ = ["AtomicCheckpointer", "EfficientPSTrainer", "ResumableTrainingSampler", "launch"]
