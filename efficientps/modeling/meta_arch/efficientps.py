"""The EfficientPS meta-architecture: backbone -> semantic head + RPN + ROI heads -> fusion."""

import logging
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    build_backbone,
    build_proposal_generator,
    build_roi_heads,
    build_sem_seg_head,
)
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import ImageList
from fvcore.nn import parameter_count
from torch import nn

from ...class_tables import PanopticClassTables
from ..inplace_abn import convert_to_inplace_abn, refresh_small_channels
from ..layers import configure_inference
from .fusion_module import EfficientPSPanopticFusion

logger = logging.getLogger(__name__)

INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@META_ARCH_REGISTRY.register()
class EfficientPS(nn.Module):
    """EfficientPS (Mohan & Valada, IJCV 2021) in detectron2's model interface.

    Training returns a dict of losses (semantic, RPN, ROI and, for the learned fusion, its
    detection quality's). Inference returns per image {"sem_seg", "instances",
    "panoptic_seg"} resized to the input's "height"/"width"; panoptic segments use semantic
    channels as category ids.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        sem_seg_head,
        proposal_generator,
        roi_heads,
        pixel_mean,
        pixel_std,
        class_tables: PanopticClassTables,
        panoptic_fusion: EfficientPSPanopticFusion,
        inference_dtype="float32",
        reported_score_thresh=None,
    ):
        """
        Args:
            backbone, sem_seg_head, proposal_generator, roi_heads: the built components
                (detectron2 Backbone, EfficientPSSemSegHead, RPN, EfficientPSROIHeads).
            pixel_mean, pixel_std: per-channel input normalisation, in the input's channel order.
            class_tables: semantic channels of the stuff and thing classes.
            panoptic_fusion: the fusion module (paper, learned, pixel rules, thresholds).
            inference_dtype: "float32", or "bfloat16"/"float16" to run backbone and heads under
                autocast at inference (the fusion always runs in float32).
            reported_score_thresh: None, or the box score of the detections in the "instances"
                output when the ROI heads detect below it for the fusion (the learned fusion's
                candidates; MODEL.EFFICIENTPS.FUSION_CANDIDATE_THRESH).
        """
        super().__init__()
        if sem_seg_head.num_classes != class_tables.num_classes:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES: the semantic head predicts "
                f"{sem_seg_head.num_classes} classes but the class tables "
                f"have {class_tables.num_classes} ({len(class_tables.stuff_channels)} stuff + "
                f"{class_tables.num_things} things)"
            )
        if roi_heads.num_classes != class_tables.num_things:
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES: the ROI heads predict {roi_heads.num_classes} "
                "thing classes but the class tables "
                f"have {class_tables.num_things}"
            )
        if inference_dtype not in INFERENCE_DTYPES:
            raise ValueError(
                f"MODEL.EFFICIENTPS.INFERENCE_DTYPE={inference_dtype!r}; expected one of "
                f"{sorted(INFERENCE_DTYPES)}"
            )
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.class_tables = class_tables
        self.panoptic_fusion = panoptic_fusion
        self.inference_dtype = INFERENCE_DTYPES[inference_dtype]
        self.reported_score_thresh = reported_score_thresh
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        efficientps_cfg = cfg.MODEL.EFFICIENTPS
        class_tables = PanopticClassTables.from_config(cfg)
        components = {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "roi_heads": build_roi_heads(cfg, backbone.output_shape()),
        }
        # How the built layers run, decided here rather than by the model's constructor:
        # in-place activated BN for training memory, the folded inference path.
        for component in components.values():
            if efficientps_cfg.INPLACE_ABN:
                convert_to_inplace_abn(component)
            configure_inference(
                component,
                fold_norm=efficientps_cfg.INFERENCE_FOLD_BN,
                channels_last_devices=efficientps_cfg.INFERENCE_CHANNELS_LAST_DEVICES,
            )
        reported_score_thresh = None
        candidate_thresh = efficientps_cfg.FUSION_CANDIDATE_THRESH
        if (
            efficientps_cfg.FUSION == "learned"
            and candidate_thresh < cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        ):
            # The learned quality can keep detections the box score would not: it needs them.
            components["roi_heads"].box_predictor.test_score_thresh = candidate_thresh
            reported_score_thresh = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        parameters = parameter_count(nn.ModuleList(components.values()))[""]
        logger.info(
            f"EfficientPS with {cfg.MODEL.EFFICIENTNET.NAME}: {parameters / 1e6:.2f} M parameters"
            + (", in-place activated BN" if efficientps_cfg.INPLACE_ABN else "")
        )
        return {
            **components,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "class_tables": class_tables,
            "panoptic_fusion": EfficientPSPanopticFusion(cfg, class_tables=class_tables),
            "inference_dtype": efficientps_cfg.INFERENCE_DTYPE,
            "reported_score_thresh": reported_score_thresh,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs):
        images = [
            (x["image"].to(self.device, non_blocking=True) - self.pixel_mean) / self.pixel_std
            for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Losses in training, predictions at inference.

        Args:
            batched_inputs: detectron2's list of dicts, one per image: "image" (C, H, W) in
                the config's INPUT.FORMAT; for training "sem_seg" (H, W) and "instances"
                (gt_boxes, gt_classes, gt_masks); optional "height"/"width" of the output.

        Returns:
            Training: dict of weighted losses (semantic, RPN, ROI, learned fusion's quality).
            Inference: per image {"sem_seg": (C, H, W) logits, "instances": detections with
            ``pred_mask_logits``, "panoptic_seg": (ids (H, W), segments_info)}, at the
            input's "height"/"width". In eval mode without autograd the convs run with folded
            BatchNorm (``layers.ConvNormAct``); the outputs equal the plain path's to float
            rounding.
        """
        if not self.training:
            return self.inference(batched_inputs)
        refresh_small_channels(self)  # one host read for all iABN layers, not one per layer
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_targets = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.backbone.size_divisibility,
            self.sem_seg_head.ignore_value,
        ).tensor
        sem_logits, losses = self.sem_seg_head(features, sem_targets, images.image_sizes)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses.update(proposal_losses)
        losses.update(detector_losses)
        if self.panoptic_fusion.trainable:
            detections = self._detections_for_fusion(images, features, proposals)
            losses.update(
                self.panoptic_fusion.losses(
                    sem_logits.detach(), detections, images.image_sizes, gt_instances
                )
            )
        return losses

    def _detections_for_fusion(self, images, features, proposals):
        """What inference would detect on the training batch: the ROI heads in eval mode on the
        RPN's proposals (the first POST_NMS_TOPK_TEST of each, as at inference), without
        autograd and without touching the heads' state (no BatchNorm statistics, no sampling)."""
        features = {name: value.detach() for name, value in features.items()}
        topk = self.proposal_generator.post_nms_topk[False]
        was_training = self.roi_heads.training
        self.roi_heads.train(False)
        try:
            with torch.no_grad():
                detections, _ = self.roi_heads(images, features, [p[:topk] for p in proposals])
        finally:
            self.roi_heads.train(was_training)
        return detections

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        """Predictions for ``batched_inputs`` (eval mode), as detectron2's models offer it.

        Args:
            batched_inputs: as for ``forward``.
            detected_instances: optional per-image ``Instances`` with ``pred_boxes`` and
                ``pred_classes`` in the input image's frame: the detector is skipped and the
                mask head runs on these boxes (test-time augmentation's second pass).
            do_postprocess: True: ``forward``'s outputs (resized to "height"/"width", fused).
                False: per image {"sem_seg": (C, h, w) logits, "instances": detections} at the
                input image's own size h x w (padding removed, nothing resized or fused).
        """
        if self.training:
            raise RuntimeError("EfficientPS.inference needs eval mode (model.eval())")
        images = self.preprocess_image(batched_inputs)
        sem_logits, detections = self.inference_on_images(images, detected_instances)
        if do_postprocess:
            return self.postprocess(batched_inputs, images, sem_logits, detections)
        return [
            {"sem_seg": sem[:, :h, :w], "instances": det}
            for sem, det, (h, w) in zip(sem_logits, detections, images.image_sizes)
        ]

    def inference_on_images(self, images: ImageList, detected_instances=None):
        """``inference`` after preprocessing: backbone and heads on normalised, padded images.

        Returns (semantic logits (N, C, H, W) of the padded batch, per-image detections in
        float32). ``inference`` calls it after ``preprocess_image``; the ONNX export calls it
        after its own padding (see ``efficientps.export``).
        """
        with self.inference_autocast():
            features = self.backbone(images.tensor)
            sem_logits, _ = self.sem_seg_head(features)
            if detected_instances is None:
                proposals, _ = self.proposal_generator(images, features, None)
                detections, _ = self.roi_heads(images, features, proposals, None)
            else:
                detected_instances = [x.to(self.device) for x in detected_instances]
                detections = self.roi_heads.forward_with_given_boxes(features, detected_instances)
        del features  # not needed past the heads: the pyramid is freed before the fusion
        return _as_float32(sem_logits, detections)

    def postprocess(self, batched_inputs, images, sem_logits, detections):
        """Resize to each input's height/width and fuse."""
        results = []
        for sem, det, x, image_size in zip(
            sem_logits, detections, batched_inputs, images.image_sizes
        ):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            if sem.shape[-2:] != (height, width) or tuple(image_size) != (height, width):
                sem = sem_seg_postprocess(sem, image_size, height, width)
            # else: already the requested size, unpadded; skip a full-resolution copy
            det = detector_postprocess(det, height, width)
            det, panoptic = self.fuse(sem, det)
            results.append({"sem_seg": sem, "instances": det, "panoptic_seg": panoptic})
        return results

    def fuse(self, sem_logits, detections):
        """(the reported detections, (panoptic ids, segments_info)) of one image's semantic
        logits and detections at the output size: all detections are fused; the learned
        fusion's candidates under ROI_HEADS.SCORE_THRESH_TEST are not reported."""
        panoptic = self.panoptic_fusion(sem_logits, detections)
        if self.reported_score_thresh is None:
            return detections, panoptic
        return _reported(detections, panoptic, self.reported_score_thresh)

    def inference_autocast(self):
        """Autocast to MODEL.EFFICIENTPS.INFERENCE_DTYPE around backbone and heads (or nothing)."""
        dtype = self.inference_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)


def _reported(detections, panoptic, score_thresh):
    """The detections at or above ``score_thresh`` (the "instances" output), and the panoptic
    segments' "instance_index" as rows of them (None for a segment of a candidate below)."""
    reported = detections.scores >= score_thresh
    rows = (reported.cumsum(0) - 1).tolist()
    reported_list = reported.tolist()
    ids, segments = panoptic
    for segment in segments:
        if segment["isthing"]:
            index = segment["instance_index"]
            segment["instance_index"] = rows[index] if reported_list[index] else None
    return detections[reported], (ids, segments)


def _as_float32(sem_logits, detections):
    """Semantic logits and every floating-point detection field in float32 (after autocast)."""
    if sem_logits.dtype == torch.float32:
        return sem_logits, detections
    for instances in detections:
        for name, value in instances.get_fields().items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                instances.set(name, value.float())
            elif hasattr(value, "tensor") and value.tensor.is_floating_point():  # Boxes
                instances.set(name, type(value)(value.tensor.float()))
    return sem_logits.float(), detections
