"""SyncBN on CPUs: the config's norms swapped for ones that run there (train_net.py, tools)."""

import logging

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
