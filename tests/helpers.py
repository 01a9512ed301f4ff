"""Shared builders for the tests: stock detectron2 configs and hand-made ground truth."""

import uuid
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances

from efficientps import add_efficientps_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE_CONFIG = str(CONFIGS / "Base-EfficientPS.yaml")


def base_cfg():
    """Base-EfficientPS.yaml with ``add_efficientps_config``; not frozen."""
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(BASE_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def registered_synthetic_train_split(root, prefix, count, seed):
    """``count`` synthetic 64x128 training images under ``root``, registered under a new
    dataset name (returned)."""
    from efficientps.data import synthetic
    from efficientps.data.datasets import register_synthetic_panoptic

    synthetic.generate_split(str(root), "train", count, seed=seed, size=(64, 128), progress=False)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    register_synthetic_panoptic(name, str(root), "train")
    return name


def flat_config(node, prefix=""):
    """{"MODEL.RPN.NMS_THRESH": value, ...}: every leaf of a config, by its full key."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stock_mask_rcnn_cfg():
    """detectron2's Mask R-CNN R50-FPN from get_cfg() (no model zoo), small enough for a CPU."""
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 500
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    return cfg


def synthetic_instances(height, width, boxes=((10, 20, 110, 150),), classes=(3,)):
    """Instances with gt boxes, classes and box-shaped bit masks (x0, y0, x1, y1 pixels)."""
    gt = Instances((height, width))
    gt.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    gt.gt_classes = torch.tensor(classes, dtype=torch.int64)
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    gt.gt_masks = BitMasks(masks)
    return gt
