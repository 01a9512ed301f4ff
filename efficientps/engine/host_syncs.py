"""Count the calls that make the host wait for a GPU, on any device (a CPU included).

On a GPU, every operation whose result the host must read stalls the host until the device
has caught up: ``.item()``/``int()``/``bool()`` of a tensor, ``.tolist()``, ``nonzero`` and
boolean-mask indexing (their output size depends on the data), ``unique``, copies to the host.
``SyncCounter`` counts them by the source line that asked, so that a CPU run (a test, the
``benchmarks/host_syncs.py`` table) shows what a GPU run would wait for. It does not see syncs
inside C++ kernels (bincount on CUDA reads its maximum).
"""

import collections
import os
import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ALWAYS_SYNC = {
    "aten._local_scalar_dense",  # item(), int(), float(), bool() of a tensor
    "aten.nonzero",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.masked_select",
}
INDEXING = {"aten.index", "aten.index_put_", "aten.index_put", "aten._index_put_impl_"}
HOST_COPIES = {"tolist", "numpy", "cpu"}
_THIS_FILE = os.path.abspath(__file__)


def _has_bool_index(args):
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _caller():
    """file:line of the innermost frame outside torch (the code that asked for the sync)."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename
        if f"{os.sep}torch{os.sep}" in path or path == _THIS_FILE:
            continue
        for marker in ("efficientps", "detectron2", "torchvision"):
            if f"{os.sep}{marker}{os.sep}" in path:
                return path[path.rindex(f"{os.sep}{marker}{os.sep}") + 1 :], frame.lineno
        return os.path.basename(path), frame.lineno
    return "autograd engine (backward of a torch op)", 0


class SyncCounter:
    """Counts host-synchronising calls by caller while active (a context manager)."""

    def __init__(self):
        self.calls = collections.Counter()
        counter = self

        class _Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func.overloadpacket)
                if name in ALWAYS_SYNC or (name in INDEXING and _has_bool_index(args)):
                    counter.calls[_caller()] += 1
                return func(*args, **(kwargs or {}))

        class _Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if getattr(func, "__name__", "") in HOST_COPIES:
                    counter.calls[_caller()] += 1
                return func(*args, **(kwargs or {}))

        self._modes = (_Function(), _Dispatch())

    def __enter__(self):
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def total(self):
        return sum(self.calls.values())

    def by_file(self):
        files = collections.Counter()
        for (path, _), n in self.calls.items():
            files[path] += n
        return files
