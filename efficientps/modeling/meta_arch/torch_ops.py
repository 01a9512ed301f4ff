"""torch behind the panoptic fusion's array namespace (``efficientps_runtime.array_ops``).

One instance per device: every array it makes is made there, so the fusion never moves data
between host and device except where it reads numbers it loops over (``.tolist()``).
"""

import torch

from ...channel_argmax import channel_argmax


class TorchOps:
    float32, float64, int32, int64 = torch.float32, torch.float64, torch.int32, torch.int64
    bool = torch.bool

    def __init__(self, device):
        self.device = torch.device(device)

    def asarray(self, values, dtype):
        return torch.as_tensor(values, dtype=dtype, device=self.device)

    def astype(self, array, dtype):
        return array.to(dtype)

    def zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def full(self, shape, value, dtype):
        return torch.full(shape, value, dtype=dtype, device=self.device)

    def arange(self, start, stop, dtype):
        return torch.arange(start, stop, dtype=dtype, device=self.device)

    def where(self, condition, a, b):
        return torch.where(condition, a, b)

    def fill_where(self, array, condition, value):
        # In place without boolean indexing (which reads its count on the host).
        array.masked_fill_(condition, value)

    def maximum(self, a, b, out=None):
        return torch.maximum(a, b, out=out) if out is not None else torch.maximum(a, b)

    def clip(self, array, low=None, high=None):
        return array.clamp(min=low, max=high)

    def floor(self, array):
        return array.floor()

    def abs(self, array):
        return array.abs()

    def log(self, array):
        return array.log()

    def sigmoid(self, array):
        return array.sigmoid()

    def sum(self, array, axis):
        return array.sum(dim=axis)

    def argmax(self, array, axis):
        if axis == 0 and array.dim() == 3:
            return channel_argmax(array)  # same result, ~4x faster on the CPU
        return array.argmax(dim=axis)

    def nonzero(self, array):
        return torch.nonzero(array).flatten()

    def nonzero_2d(self, array):
        return torch.nonzero(array, as_tuple=True)

    def argsort_descending(self, array):
        return torch.sort(array, descending=True, stable=True)[1]

    def bincount(self, array, minlength):
        return torch.bincount(array.flatten(), minlength=minlength)

    def cat(self, arrays):
        return torch.cat(arrays)

    def swap_last_axes(self, array):
        return array.transpose(-1, -2)

    def stack(self, arrays, axis):
        return torch.stack(arrays, dim=axis)
