"""Weight files are untrusted: the one way every entry point reads them.

People fine-tune from weights they downloaded, so a weight file is read without running code
from it. ``.pth``/``.pt``/``.bin``/``.pyth``: ``torch.load(weights_only=True)`` (tensors and
plain containers), with NumPy arrays allowed as well. ``.pkl`` (detectron2's model zoo and
Detectron/Caffe2 files: dicts of NumPy arrays): a restricted unpickler that builds NumPy arrays,
dtypes and plain containers and refuses any other global. ``.safetensors``: tensors only by
design. A file that needs anything else is refused, naming the file, the config key or option
that gave it and the global it asked for; nothing from it is executed.

Training init, ``--resume``, ``--eval-only``, the demo, the export tool and both converters all
read through ``read_weight_file`` (the trainer's checkpointer through ``detectron2_checkpoint``).
"""

import os
import pickle

import numpy as np
import torch

_CORE = np._core if hasattr(np, "_core") else np.core  # NumPy 2 / 1
# Globals a NumPy array pickle needs, under NumPy 1 and NumPy 2 module names. _codecs.encode
# turns a latin-1 str back into bytes (how Python 3 pickles bytes at protocol 2).
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _CORE.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _CORE.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _CORE.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _CORE.multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _CORE.numeric._frombuffer,  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"): _CORE.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_PICKLE_GLOBALS = {
    **_NUMPY_GLOBALS,
    ("_codecs", "encode"): __import__("codecs").encode,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
}
# torch.load(weights_only=True) takes the same NumPy globals, named as the file names them
# (NumPy 1 files say numpy.core.*), and the dtype classes that unpickled dtypes are instances of.
_TORCH_SAFE_GLOBALS = [(obj, f"{module}.{name}") for (module, name), obj in _NUMPY_GLOBALS.items()]
_TORCH_SAFE_GLOBALS += list({id(obj): obj for obj in _NUMPY_GLOBALS.values()}.values())
_TORCH_SAFE_GLOBALS += [
    getattr(np.dtypes, name) for name in dir(getattr(np, "dtypes", None)) if name.endswith("DType")
]
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".pyth", ".ckpt")


class WeightFileError(ValueError):
    """A weight file that cannot be read, or that would run code if it were."""


class UnsafeWeightFileError(WeightFileError):
    """A weight file that asks for objects other than arrays and plain containers."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        found = _PICKLE_GLOBALS.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found


class _RefusedGlobal(pickle.UnpicklingError):
    pass


def _refusal(path, what, global_name):
    return UnsafeWeightFileError(
        f"{what}: {path} asks for the global {global_name!r}; a weight file may hold tensors, "
        "NumPy arrays and plain containers only. Loading it would run arbitrary code from the "
        "file, so it is refused. If you trust it, re-save its state dict with "
        "torch.save({'model': state_dict}, path)"
    )


def _read_pickle(path, what):
    with open(path, "rb") as f:
        try:
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
        except _RefusedGlobal as refused:
            raise _refusal(path, what, str(refused)) from None
        except Exception as e:  # a damaged pickle fails in many ways (MemoryError from a
            # corrupted length, KeyError from a memo, ...); none of them ran code from it
            raise WeightFileError(f"{what}: cannot read {path} as a pickle: {_reason(e)}") from e


def _read_torch(path, what):
    try:
        with torch.serialization.safe_globals(_TORCH_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise _refusal(path, what, unsafe[0]) from None
        raise WeightFileError(
            f"{what}: cannot read {path} as a torch checkpoint: {_reason(e)}"
        ) from e
    except Exception as e:  # zip/pickle damage surfaces as many exception types
        raise WeightFileError(
            f"{what}: cannot read {path} as a torch checkpoint: {_reason(e)}"
        ) from e


def _unsafe_globals(path):
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []
    allowed = {f"{m}.{n}" for m, n in _NUMPY_GLOBALS}
    return [name for name in names if name not in allowed and not name.startswith("numpy.dtypes.")]


def _read_safetensors(path, what):
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:
        raise WeightFileError(f"{what}: cannot read {path} as safetensors: {_reason(e)}") from e


def _reason(error):
    """One line of why: torch's weights-only errors bury it after 'WeightsUnpickler error:'."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def read_weight_file(path, what="MODEL.WEIGHTS"):
    """The object a weight file holds, read without running code from it.

    ``what`` names the config key or option that gave ``path`` in every error.
    """
    if not path:
        raise WeightFileError(f"{what} is empty: give the path of a weight file")
    if os.path.isdir(path):
        raise WeightFileError(f"{what}: {path} is a folder; expected a weight file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no file {path}")
    if os.path.getsize(path) == 0:
        raise WeightFileError(f"{what}: {path} is empty (0 bytes); expected a weight file")
    if path.endswith(".pkl"):
        return _read_pickle(path, what)
    if path.endswith(".safetensors"):
        return _read_safetensors(path, what)
    return _read_torch(path, what)


def detectron2_checkpoint(path, what="MODEL.WEIGHTS"):
    """``read_weight_file`` in the form detectron2's checkpointer loads: {"model": ..., ...}.

    The same formats as detectron2's ``DetectionCheckpointer``: its model zoo's ``.pkl``
    ({"model", "__author__", ...}), Detectron/Caffe2 ``.pkl`` (blobs, matched by name
    heuristics), pycls ``.pyth`` ({"model_state"}), and torch checkpoints or bare state dicts.
    """
    data = read_weight_file(path, what)
    if not isinstance(data, dict):
        raise WeightFileError(
            f"{what}: {path} holds a {type(data).__name__}, not a dict of weights"
        )
    if path.endswith(".pkl"):
        if "model" in data and "__author__" in data:
            return data
        blobs = data.get("blobs", data)
        weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}
    if path.endswith(".pyth"):
        if "model_state" not in data:
            raise WeightFileError(f"{what}: {path} (pycls .pyth) has no 'model_state'")
        weights = {
            k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")
        }
        return {"model": weights, "__author__": "pycls", "matching_heuristics": True}
    return data if "model" in data else {"model": data}


def state_dict_of(path, what="MODEL.WEIGHTS"):
    """The model weights of a checkpoint or bare state dict (NumPy arrays as tensors)."""
    weights = detectron2_checkpoint(path, what)["model"]
    if not isinstance(weights, dict):
        raise WeightFileError(f"{what}: {path} holds no state dict (a {type(weights).__name__})")
    return arrays_as_tensors(weights)


def arrays_as_tensors(weights):
    """``weights`` with its NumPy arrays (what .pkl files and some .pth hold) as tensors."""
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in weights.items()}
