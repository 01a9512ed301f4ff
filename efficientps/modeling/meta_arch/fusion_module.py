"""The panoptic fusion as one module: the paper's rule, its variants and the learned quality.

EfficientPS builds it in ``from_config`` and calls it. Its settings are one ``FusionParams``
(thresholds, stuff area, mask-logit scale, pixel rule: efficientps_runtime/fusion_params.py,
which the exporter writes to metadata.json and the runtime reads); the learned fusion's
detection quality (``LearnedDetectionQuality``) is its only parameters. The algorithm is
``efficientps_runtime.fusion_core.fuse_detections``, which the runtime runs too (one
implementation over NumPy and torch).
"""

import torch
from detectron2.config import configurable
from torch import nn

from efficientps_runtime.fusion_core import fuse_detections
from efficientps_runtime.fusion_params import FusionParams

from ...class_tables import PanopticClassTables
from .learned_fusion import LearnedDetectionQuality
from .torch_ops import TorchOps

FUSIONS = ("paper", "learned")


class EfficientPSPanopticFusion(nn.Module):
    """Semantic logits + detections of one image -> (panoptic ids, segments_info).

    ``learned=True`` adds the trainable detection quality (``LearnedDetectionQuality``,
    starting as the box score), which replaces the box score in the fusion, and its loss;
    otherwise the module has no parameters and no loss.
    """

    @configurable
    def __init__(
        self,
        *,
        class_tables: PanopticClassTables,
        params: FusionParams = None,
        learned=False,
        loss_weight=1.0,
    ):
        """
        Args:
            class_tables: semantic channels of the stuff and thing classes.
            params: the fusion's settings (``FusionParams``; None: the paper's).
            learned: add the trainable detection quality and its loss.
            loss_weight: the learned quality's loss weight.
        """
        super().__init__()
        self.class_tables = class_tables
        self.params = params or FusionParams()
        self.quality = (
            LearnedDetectionQuality(class_tables.num_things, loss_weight=loss_weight)
            if learned
            else None
        )
        self.register_buffer(
            "thing_channels", torch.tensor(list(class_tables.thing_channels)), persistent=False
        )

    @classmethod
    def from_config(cls, cfg, class_tables=None):
        efficientps_cfg = cfg.MODEL.EFFICIENTPS
        if efficientps_cfg.FUSION not in FUSIONS:
            raise ValueError(
                f"MODEL.EFFICIENTPS.FUSION={efficientps_cfg.FUSION!r}; expected one of {FUSIONS}"
            )
        return {
            "class_tables": class_tables or PanopticClassTables.from_config(cfg),
            "params": FusionParams.from_config(cfg),
            "learned": efficientps_cfg.FUSION == "learned",
            "loss_weight": efficientps_cfg.FUSION_LOSS_WEIGHT,
        }

    def to_metadata(self):
        """metadata.json's "fusion" (settings and learned quality), which the runtime's
        ``PanopticFusion.from_metadata`` reads back."""
        quality = None if self.quality is None else self.quality.to_metadata()
        return self.params.to_metadata(quality)

    @property
    def trainable(self):
        """Whether the fusion has parameters and a loss (the learned fusion)."""
        return self.quality is not None

    def forward(self, sem_logits, detections):
        """Fuse one image's semantic logits (C, H, W) and its detections at the same size.

        ``detections``: Instances with pred_boxes, pred_classes (thing indices), scores and
        pred_mask_logits (R, 1, M, M). Returns (panoptic (H, W) int32 ids, segments_info);
        a thing segment's "instance_index" is its row in ``detections`` and its "score" the
        box score (paper) or the learned quality.
        """
        ops = TorchOps(sem_logits.device)
        quality_weights = None
        if self.quality is not None:
            quality_weights = (
                self.quality.feature_weights.detach(),
                self.quality.class_bias.detach(),
            )
        return fuse_detections(
            ops,
            sem_logits,
            detections.pred_boxes.tensor,
            detections.scores,
            detections.pred_classes,
            detections.pred_mask_logits[:, 0],
            stuff_channels=self.class_tables.stuff_channels,
            thing_channels=self.class_tables.thing_channels,
            params=self.params,
            quality_weights=quality_weights,
        )

    def losses(self, sem_logits, detections, image_sizes, gt_instances):
        """The learned quality's loss ({} for the parameter-free fusions).

        Args: as ``LearnedDetectionQuality.loss`` (the batch's semantic logits, per image its
        inference detections, size and ground-truth instances).
        """
        if self.quality is None:
            return {}
        return self.quality.loss(
            sem_logits, detections, image_sizes, gt_instances, self.thing_channels
        )
