"""Config adjustments and weight loading that train_net.py needs on every detectron2 version."""

import logging
import os

logger = logging.getLogger(__name__)

NORM_KEYS = (
    ("EFFICIENTNET", "NORM"),
    ("TWO_WAY_FPN", "NORM"),
    ("SEM_SEG_HEAD", "NORM"),
    ("RPN", "NORM"),
    ("ROI_BOX_HEAD", "NORM"),
    ("ROI_MASK_HEAD", "NORM"),
)


def cpu_safe_norms(cfg, world_size):
    """On the CPU, SyncBN cannot run: naiveSyncBN (gloo all-reduce) or, in one process, BN."""
    if not str(cfg.MODEL.DEVICE).startswith("cpu"):
        return cfg
    replacement = "naiveSyncBN" if world_size > 1 else "BN"
    for node, key in NORM_KEYS:
        if cfg.MODEL[node][key] == "SyncBN":
            logger.warning(
                f"MODEL.{node}.{key}=SyncBN does not run on the CPU; using {replacement}"
            )
            cfg.MODEL[node][key] = replacement
    return cfg


def load_weights_or_fail(checkpointer, path):
    """Load MODEL.WEIGHTS for evaluation, failing clearly on a missing or unrelated file."""
    if not path:
        raise ValueError("--eval-only needs trained weights: set MODEL.WEIGHTS /path/to/model.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS: no file {path!r}")
    try:
        checkpoint = checkpointer._load_file(path)
    except Exception as e:
        raise ValueError(f"MODEL.WEIGHTS: cannot read {path!r} as a checkpoint: {e}") from e
    weights = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    expected = set(checkpointer.model.state_dict())
    found = set(weights or {}) & expected
    if len(found) < len(expected) // 2:
        raise ValueError(
            f"MODEL.WEIGHTS: {path!r} holds {len(found)} of the model's {len(expected)} tensors; "
            "it is not a checkpoint of this model (wrong config or file?)"
        )
    checkpointer._load_model(checkpoint)
    logger.info(f"Loaded {len(found)}/{len(expected)} tensors from {path}")
