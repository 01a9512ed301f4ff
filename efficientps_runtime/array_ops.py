"""The few array operations the panoptic fusion needs, for NumPy (here) and torch (the model).

The fusion (``fusion_core``) is written once against this namespace so that the PyTorch model
(any device) and the torch-free runtime run the same algorithm. Arrays of both libraries share
what the fusion uses besides: arithmetic and comparison operators, ``@``, ``.T``, basic and
integer-array indexing, ``x[...] = y`` into views, ``.sum()``, ``.any()``, ``.tolist()``;
everything whose spelling differs (``axis`` / ``dim``, ``astype`` / ``to``, dtypes, devices,
``bincount``) is a method here. ``TorchOps`` lives with the model
(``efficientps.modeling.meta_arch.torch_ops``): this package does not import torch.
"""

import numpy as np


class NumpyOps:
    """NumPy behind the fusion's namespace: float32, int64 and bool arrays on the host."""

    float32, float64, int32, int64, bool = np.float32, np.float64, np.int32, np.int64, np.bool_

    def asarray(self, values, dtype):
        return np.asarray(values, dtype=dtype)

    def astype(self, array, dtype):
        return array.astype(dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype=dtype)

    def arange(self, start, stop, dtype):
        return np.arange(start, stop, dtype=dtype)

    def where(self, condition, a, b):
        return np.where(condition, a, b)

    def fill_where(self, array, condition, value):
        """``array[condition] = value`` in place (``array`` may be a view)."""
        array[condition] = value

    def maximum(self, a, b, out=None):
        return np.maximum(a, b, out=out)

    def clip(self, array, low=None, high=None):
        return np.clip(array, low, high)

    def floor(self, array):
        return np.floor(array)

    def abs(self, array):
        return np.abs(array)

    def log(self, array):
        return np.log(array)

    def sigmoid(self, array):
        return np.float32(1) / (np.float32(1) + np.exp(-array))

    def sum(self, array, axis):
        return array.sum(axis=axis)

    def argmax(self, array, axis):
        """Ties to the first index (as torch's and the fusion's rule)."""
        return np.argmax(array, axis=axis)

    def nonzero(self, array):
        """Indices of the true entries of a 1-d array."""
        return np.nonzero(array)[0]

    def nonzero_2d(self, array):
        """(rows, cols) of the true entries of a 2-d array, row-major."""
        return np.nonzero(array)

    def argsort_descending(self, array):
        """Indices from the largest value, ties in index order (stable)."""
        return np.argsort(-array, kind="stable")

    def bincount(self, array, minlength):
        return np.bincount(array.ravel(), minlength=minlength)

    def cat(self, arrays):
        return np.concatenate(arrays)

    def swap_last_axes(self, array):
        return np.swapaxes(array, -1, -2)

    def stack(self, arrays, axis):
        return np.stack(arrays, axis=axis)


NUMPY = NumpyOps()
