"""EfficientPS' Mask R-CNN variant: RPN head, box head, separable mask head and ROI heads.

The paper replaces every standard conv of Mask R-CNN with a depthwise-separable one and BN with
iABN (norm + LeakyReLU); the authors' code does so in the mask head only. Each piece has its own
switch. The ROI heads also return each detection's mask *logits*, which the panoptic fusion needs.
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat
from detectron2.modeling import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    RPN_HEAD_REGISTRY,
    StandardROIHeads,
)
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead
from detectron2.structures import Boxes, Instances
from fvcore.nn import weight_init
from torch import nn

from ..layers import build_activation, build_norm, check_layer_names, conv_or_separable
from ..roi_align import use_fast_cpu_roi_align


@RPN_HEAD_REGISTRY.register()
class EfficientPSRPNHead(nn.Module):
    """RPN head shared over levels: 3x3 conv (+ norm) + activation, 1x1 objectness, 1x1 deltas.

    ``separable=False`` (default) is what matches the paper's parameter count.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels,
        num_anchors,
        box_dim=4,
        separable=False,
        norm="",
        activation="leaky_relu",
    ):
        """
        Args:
            in_channels: channels of every input level (all the same).
            num_anchors: anchors per position (the anchor generator's).
            box_dim: box regression outputs per anchor.
            separable: depthwise-separable 3x3 conv.
            norm, activation: after the 3x3 conv (layers.NORMS, layers.ACTIVATIONS).
        """
        super().__init__()
        self.conv = conv_or_separable(
            in_channels, in_channels, 3, separable=separable, norm=norm, act=activation
        )
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * box_dim, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"RPN levels must have the same channels, got {sorted(channels)}")
        check_layer_names(cfg, "RPN")
        anchor_generator = build_anchor_generator(cfg, input_shape)
        if len(set(anchor_generator.num_anchors)) != 1:
            raise ValueError("each RPN level must have the same number of anchors per position")
        return {
            "in_channels": channels.pop(),
            "num_anchors": anchor_generator.num_anchors[0],
            "box_dim": anchor_generator.box_dim,
            "separable": cfg.MODEL.RPN.SEPARABLE,
            "norm": cfg.MODEL.RPN.NORM,
            "activation": cfg.MODEL.RPN.ACTIVATION,
        }

    def forward(self, features: List[torch.Tensor]):
        objectness, deltas = [], []
        for x in features:
            hidden = self.conv(x)
            objectness.append(self.objectness_logits(hidden))
            deltas.append(self.anchor_deltas(hidden))
        return objectness, deltas


@ROI_BOX_HEAD_REGISTRY.register()
class EfficientPSBoxHead(nn.Sequential):
    """Box head: flatten, then ``num_fc`` x [FC ``fc_dim`` + optional norm + activation]."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_fc=2, fc_dim=1024, norm="", activation=""):
        """
        Args:
            input_shape: the pooled ROI features (channels, 7x7).
            num_fc, fc_dim: number and width of the FC layers.
            norm: after each FC, any of layers.NORMS ("" none), applied to the FC output as a
                (N, fc_dim, 1, 1) map: BN is BatchNorm1d's statistics, SyncBN and naiveSyncBN
                synchronise them, FrozenBN and GN work as in the convs.
            activation: after each FC ("" = ReLU, detectron2's).
        """
        super().__init__()
        in_dim = input_shape.channels * (input_shape.height or 1) * (input_shape.width or 1)
        self.add_module("flatten", nn.Flatten())
        for k in range(num_fc):
            fc = nn.Linear(in_dim, fc_dim)
            weight_init.c2_xavier_fill(fc)
            self.add_module(f"fc{k + 1}", fc)
            norm_layer = build_norm(norm, fc_dim)
            if norm_layer is not None:
                self.add_module(f"fc{k + 1}_norm", norm_layer)
            self.add_module(f"fc{k + 1}_act", build_activation(activation or "relu"))
            in_dim = fc_dim
        self._output_size = in_dim

    def forward(self, x):
        for name, layer in self.named_children():
            if name.endswith("_norm"):  # 2-d norms over (N, C, 1, 1)
                x = layer(x[:, :, None, None]).flatten(1)
            else:
                x = layer(x)
        return x

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_layer_names(cfg, "ROI_BOX_HEAD")
        return {
            "input_shape": input_shape,
            "num_fc": cfg.MODEL.ROI_BOX_HEAD.NUM_FC,
            "fc_dim": cfg.MODEL.ROI_BOX_HEAD.FC_DIM,
            "norm": cfg.MODEL.ROI_BOX_HEAD.NORM,
            "activation": cfg.MODEL.ROI_BOX_HEAD.ACTIVATION,
        }

    @property
    def output_shape(self):
        return ShapeSpec(channels=self._output_size)


@ROI_MASK_HEAD_REGISTRY.register()
class EfficientPSMaskHead(BaseMaskRCNNHead, nn.Sequential):
    """Mask head: ``num_conv`` x [3x3 (separable) conv + norm + act], 2x2 deconv + act, 1x1.

    Gives per-class 28x28 mask logits from 14x14 ROI features; BCE loss (detectron2's).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes,
        conv_dims=(256, 256, 256, 256),
        separable=True,
        norm="BN",
        activation="leaky_relu",
        deconv_activation=None,
        **kwargs,
    ):
        """
        Args:
            input_shape: the pooled ROI features (channels, 14x14).
            num_classes: mask channels (1 for class-agnostic masks).
            conv_dims: output channels of the 3x3 convs.
            separable: depthwise-separable 3x3 convs (paper and authors' code).
            norm, activation: after every 3x3 conv (layers.NORMS, layers.ACTIVATIONS).
            deconv_activation: after the 2x2 deconv; None = ``activation`` (the paper's
                LeakyReLU everywhere), "relu" in the authors' code.
            kwargs: BaseMaskRCNNHead's (loss weight, vis period).
        """
        super().__init__(**kwargs)
        channels = input_shape.channels
        for k, dim in enumerate(conv_dims):
            conv = conv_or_separable(
                channels, dim, 3, separable=separable, norm=norm, act=activation
            )
            self.add_module(f"mask_fcn{k + 1}", conv)
            channels = dim
        self.deconv = ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
        self.deconv_act = build_activation(
            activation if deconv_activation is None else deconv_activation
        )
        self.predictor = Conv2d(channels, num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.deconv)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_layer_names(cfg, "ROI_MASK_HEAD")
        args = super().from_config(cfg, input_shape)
        mask_head_cfg = cfg.MODEL.ROI_MASK_HEAD
        args.update(
            input_shape=input_shape,
            num_classes=1 if mask_head_cfg.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            conv_dims=[mask_head_cfg.CONV_DIM] * mask_head_cfg.NUM_CONV,
            separable=mask_head_cfg.SEPARABLE,
            norm=mask_head_cfg.NORM,
            activation=mask_head_cfg.ACTIVATION,
            deconv_activation=mask_head_cfg.DECONV_ACTIVATION or None,
        )
        return args

    def layers(self, x):
        for layer in self:
            x = layer(x)
        return x


def select_class_mask_logits(mask_logits, classes):
    """(R, C, h, w) per-class logits and (R,) classes -> (R, 1, h, w) logits of each class."""
    if mask_logits.shape[1] == 1:
        return mask_logits
    # shape[0], not len(): a graph tracer records the size, len() would be a constant.
    rows = torch.arange(classes.shape[0], device=classes.device)
    return mask_logits[rows, classes][:, None]


@ROI_HEADS_REGISTRY.register()
class EfficientPSROIHeads(StandardROIHeads):
    """StandardROIHeads whose inference also sets ``pred_mask_logits`` on each detection.

    ``pred_mask_logits`` (R, 1, 28, 28) are the mask head's logits for the detection's class,
    before the sigmoid; ``pred_masks`` stays detectron2's (its sigmoid). The panoptic fusion of
    EfficientPS fuses logits, not probabilities.

    ``fast_cpu_roi_align`` swaps the poolers' ROIAlign for ``FastCPUROIAlign`` (same outputs).
    """

    @configurable
    def __init__(self, *, fast_cpu_roi_align=True, **kwargs):
        """
        Args:
            fast_cpu_roi_align: on CPU, pool with ``FastCPUROIAlign`` (same values, faster).
            kwargs: StandardROIHeads' arguments.
        """
        super().__init__(**kwargs)
        if fast_cpu_roi_align:
            use_fast_cpu_roi_align(self.box_pooler)
            use_fast_cpu_roi_align(getattr(self, "mask_pooler", None))

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["fast_cpu_roi_align"] = cfg.MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN
        return ret

    def mask_logits_for_boxes(
        self,
        features: Dict[str, torch.Tensor],
        boxes: List[Boxes],
        classes: List[torch.Tensor],
    ) -> List[torch.Tensor]:
        """Mask logits (R_i, 1, M, M) of each box's class, per image.

        The one path from boxes to mask logits: inference, test-time augmentation and the
        learned fusion's loss (on ground-truth boxes) all use it.
        """
        pooled = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        selected = select_class_mask_logits(self.mask_head.layers(pooled), cat(classes))
        if len(boxes) == 1:  # no split: traced split sizes would be constants
            return [selected]
        return list(selected.split([len(b) for b in boxes]))

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if self.training or not self.mask_on:
            return super()._forward_mask(features, instances)
        logits = self.mask_logits_for_boxes(
            features, [x.pred_boxes for x in instances], [x.pred_classes for x in instances]
        )
        for mask_logits, inst in zip(logits, instances):
            inst.pred_mask_logits = mask_logits
            inst.pred_masks = mask_logits.sigmoid()  # detectron2's mask_rcnn_inference
        return instances
