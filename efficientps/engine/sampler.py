"""A training sampler that resumes where it stopped.

detectron2's TrainingSampler restarts its random stream on resume, so a resumed run sees other
images than the uninterrupted run would have. This one computes the same infinite stream (a
fresh permutation per epoch from (seed, epoch)) and can start at any position without replay.
"""

import itertools

import torch
from detectron2.utils import comm
from torch.utils.data.sampler import Sampler


class ResumableTrainingSampler(Sampler):
    def __init__(self, size, *, shuffle=True, seed=0, start=0):
        """
        Args:
            size: dataset length. start: position in the global stream (images already used).
        """
        if size <= 0:
            raise ValueError(f"dataset of size {size} cannot be sampled")
        self.size = size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.start = start
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()

    def _epoch(self, epoch):
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator)

    def global_stream(self, start=0):
        epoch, offset = divmod(start, self.size)
        while True:
            yield from self._epoch(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __iter__(self):
        # Each rank takes every world_size-th index of the shared stream.
        stream = self.global_stream(self.start)
        return itertools.islice(stream, self.rank, None, self.world_size)
