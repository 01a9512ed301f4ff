"""SyncBN on CPUs: the config's norms swapped for ones that run there (train_net.py, tools)."""

import logging

from detectron2.config import get_cfg

from ..config import add_efficientps_config

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


def conversion_cfg(config_file, opts=()):
    """The config to build a model on the CPU in this process only for its tensors (the
    checkpoint converters): ``config_file`` + ``opts``, CPU, SyncBN as BN (same tensors)."""
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cpu_safe_norms(cfg, world_size=1, warn=False)
