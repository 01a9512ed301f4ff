"""EfficientPS panoptic segmentation as a detectron2 plugin.

Importing this package registers its components in detectron2's registries (backbones, heads,
meta-architecture) and its datasets in DatasetCatalog.
"""

import sys


def _locating_offline_pq_command():
    """True while Python imports this package to find ``python -m efficientps.evaluation``.

    The offline PQ command reads PNG folders and needs neither torch nor detectron2, whose
    imports take ~6 s against ~0.5 s of evaluation; Python sets sys.argv[0] to "-m" only while
    it locates the module to run.
    """
    command = getattr(sys, "orig_argv", [])
    return sys.argv[:1] == ["-m"] and any(
        flag == "-m" and module == "efficientps.evaluation"
        for flag, module in zip(command, command[1:])
    )


if not _locating_offline_pq_command():
    from . import data, modeling  # noqa: F401  (registers the components and datasets)
    from .config import add_efficientps_config

__all__ = ["add_efficientps_config"]
