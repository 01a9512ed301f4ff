"""Training machinery: CPU/GPU launch, crash-safe checkpoints, a resumable sampler."""

from .checkpoint import AtomicCheckpointer
from .launch import launch
from .sampler import ResumableTrainingSampler

__all__ = ["AtomicCheckpointer", "ResumableTrainingSampler", "launch"]
