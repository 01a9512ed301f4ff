"""The panoptic fusion as one module: the paper's rule, its variants and the learned weights.

EfficientPS builds it in ``from_config`` and calls it. Its settings are one ``FusionParams``
(thresholds, stuff area, mask-logit scale, pixel rule: efficientps_runtime/fusion_params.py,
which the exporter writes to metadata.json and the runtime reads), the learned affine maps are
its parameters. The arithmetic is ``panoptic_fusion.fuse_panoptic`` (pure functions, tested by
value).
"""

from detectron2.config import configurable
from torch import nn

from efficientps_runtime.fusion_params import FusionParams

from ...class_tables import PanopticClassTables
from .learned_fusion import LearnedPanopticFusion
from .mask_paste import BoxMaskLogits
from .panoptic_fusion import fuse_panoptic

FUSIONS = ("paper", "learned")


class EfficientPSPanopticFusion(nn.Module):
    """Semantic logits + detections of one image -> (panoptic ids, segments_info).

    ``learned=True`` adds the trainable per-class affine maps of ML_A and ML_B
    (``LearnedPanopticFusion``, starting as the identity) and their panoptic loss; otherwise
    the module has no parameters and no loss.
    """

    @configurable
    def __init__(
        self,
        *,
        class_tables: PanopticClassTables,
        params: FusionParams = None,
        learned=False,
        loss_weight=1.0,
        loss_scale=0.25,
        ignore_value=255,
    ):
        """
        Args:
            class_tables: semantic channels of the stuff and thing classes.
            params: the fusion's settings (``FusionParams``; None: the paper's).
            learned: add the trainable affine maps and their panoptic loss.
            loss_weight, loss_scale: the learned fusion's loss weight and the fraction of the
                input size it is computed at. ignore_value: the semantic targets' ignore label.
        """
        super().__init__()
        self.class_tables = class_tables
        self.params = params or FusionParams()
        self.learned = (
            LearnedPanopticFusion(
                class_tables.num_things,
                loss_weight=loss_weight,
                loss_scale=loss_scale,
                ignore_value=ignore_value,
            )
            if learned
            else None
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
            "loss_scale": efficientps_cfg.FUSION_LOSS_SCALE,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    @property
    def trainable(self):
        """Whether the fusion has parameters and a loss (the learned fusion)."""
        return self.learned is not None

    def forward(self, sem_logits, detections):
        """Fuse one image's semantic logits (C, H, W) and its detections at the same size.

        ``detections``: Instances with pred_boxes, pred_classes (thing indices), scores and
        pred_mask_logits (R, 1, M, M). Returns (panoptic (H, W) int32 ids, segments_info);
        a thing segment's "instance_index" is its row in ``detections``.
        """
        height, width = sem_logits.shape[-2:]
        params = self.params
        confident = detections.scores >= params.score_thresh
        kept = detections[confident]
        # Pasted where the fusion reads them (each paste's window), never as (N, H, W) maps.
        mask_logits = BoxMaskLogits(kept.pred_mask_logits, kept.pred_boxes.tensor, height, width)
        instance_weights = None
        if self.learned is not None:
            instance_weights = self.learned.instance_weights(kept.pred_classes)
        panoptic, segments = fuse_panoptic(
            sem_logits,
            mask_logits,
            kept.pred_boxes.tensor,
            kept.pred_classes,
            kept.scores,
            stuff_channels=self.class_tables.stuff_channels,
            thing_channels=self.class_tables.thing_channels,
            score_thresh=params.score_thresh,
            overlap_thresh=params.overlap_thresh,
            stuff_area=params.stuff_area_at(height, width),
            mask_logit_scale=params.mask_logit_scale,
            instance_weights=instance_weights,
            pixel_rule=params.pixel_rule,
        )
        detection_index = confident.nonzero().flatten().tolist()
        for segment in segments:
            if segment["isthing"]:
                segment["instance_index"] = detection_index[segment["instance_index"]]
        return panoptic, segments

    def losses(self, sem_logits, gt_mask_logits, targets):
        """The learned fusion's panoptic loss ({} for the parameter-free fusions).

        Args: as ``LearnedPanopticFusion.loss`` (semantic logits of the batch, mask logits of
        the ground-truth boxes per image, per-image targets).
        """
        if self.learned is None:
            return {}
        return self.learned.loss(
            sem_logits,
            gt_mask_logits,
            targets,
            stuff_channels=self.class_tables.stuff_channels,
            thing_channels=self.class_tables.thing_channels,
        )
