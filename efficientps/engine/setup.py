"""Config adjustments and weight loading that train_net.py needs on every detectron2 version."""

import logging
import os
import pickle

import torch
from detectron2.checkpoint import DetectionCheckpointer

logger = logging.getLogger(__name__)

NORM_KEYS = (
    ("EFFICIENTNET", "NORM"),
    ("TWO_WAY_FPN", "NORM"),
    ("SEM_SEG_HEAD", "NORM"),
    ("RPN", "NORM"),
    ("ROI_BOX_HEAD", "NORM"),
    ("ROI_MASK_HEAD", "NORM"),
)


def cpu_safe_norms(cfg, world_size, warn=True):
    """On the CPU, SyncBN cannot run: naiveSyncBN (gloo all-reduce) or, in one process, BN.

    ``warn=False`` for callers that only need the model's tensors (the layers' tensors are
    the same for every BN kind), such as the checkpoint converter.
    """
    if not str(cfg.MODEL.DEVICE).startswith("cpu"):
        return cfg
    replacement = "naiveSyncBN" if world_size > 1 else "BN"
    for node, key in NORM_KEYS:
        if cfg.MODEL[node][key] == "SyncBN":
            if warn:
                logger.warning(
                    f"MODEL.{node}.{key}=SyncBN does not run on the CPU; using {replacement}"
                )
            cfg.MODEL[node][key] = replacement
    return cfg


def load_untrusted(path, what):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.

    A file that needs other objects is refused, not unpickled (that would run code from it);
    errors name ``what`` (the key or option that gave the file) and the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # damaged or not a checkpoint at all
            raise ValueError(f"{what}: cannot read {path!r} as a torch checkpoint: {e}") from e
        raise ValueError(
            f"{what}: {path!r} holds objects other than tensors and plain containers, "
            "and loading it would run arbitrary code from the file; this is refused. Re-save "
            "its state dict with torch.save({'model': model.state_dict()}, path) where you "
            f"trust it. ({e})"
        ) from e
    except Exception as e:
        raise ValueError(f"{what}: cannot read {path!r} as a torch checkpoint: {e}") from e


def read_checkpoint(path):
    """The state dict of a checkpoint file, read without unpickling arbitrary objects.

    Accepts detectron2/efficientps checkpoints ({"model": state_dict, ...}) and bare state
    dicts. Files are untrusted: ``torch.load(weights_only=True)`` allows tensors and plain
    containers only, so a file that needs other objects is refused, not executed.
    """
    if not path:
        raise ValueError("MODEL.WEIGHTS is empty: set MODEL.WEIGHTS /path/to/model.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS: no file {path!r}")
    checkpoint = load_untrusted(path, "MODEL.WEIGHTS")
    weights = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f"MODEL.WEIGHTS: {path!r} holds no state dict (a {type(checkpoint)})")
    return weights


def load_weights_or_fail(model, path, save_dir=""):
    """Load MODEL.WEIGHTS into ``model`` for inference, failing clearly on a wrong file.

    The file is checked first (``read_checkpoint``; at least half of the model's tensors must
    be in it), then loaded by detectron2's DetectionCheckpointer, which reports missing and
    unexpected keys and skips tensors of the wrong shape.
    """
    weights = read_checkpoint(path)
    check_weights_fit(model, weights, path)
    DetectionCheckpointer(model, save_dir=save_dir).load(path, checkpointables=[])


def check_weights_fit(model, weights, path):
    """Fail unless ``weights`` hold at least half of ``model``'s tensors (else: wrong file)."""
    expected = set(model.state_dict())
    found = set(weights) & expected
    if len(found) < len(expected) // 2:
        raise ValueError(
            f"MODEL.WEIGHTS: {path!r} holds {len(found)} of the model's {len(expected)} tensors; "
            "it is not a checkpoint of this model (wrong config or file?)"
        )
    logger.info(f"{path}: {len(found)}/{len(expected)} of the model's tensors")
