"""EfficientPS' semantic head: LSFE on p2/p3, DPC on p4/p5, mismatch correction, 1x1 classifier.

Predicts every class (stuff and thing). Logits are computed at 1/4 and upsampled (bilinear x4) to
the padded input size. Loss: cross entropy over the hardest fraction of pixels (paper: 25%).
"""

import math
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ..activation_checkpointing import checkpointed, checkpointing_active
from ..layers import SeparableConv2d, check_layer_names, conv_norm_act

PAPER_DPC_DILATIONS = ((1, 6), (1, 1), (6, 21), (18, 15), (6, 3))


HARD_PIXEL_RANKINGS = ("image", "batch")


def checked_ranking(ranking, name="hard-pixel ranking"):
    """``ranking`` if it is one of HARD_PIXEL_RANKINGS, else an error naming ``name``."""
    if ranking not in HARD_PIXEL_RANKINGS:
        raise ValueError(f"{name}={ranking!r}; expected one of {HARD_PIXEL_RANKINGS}")
    return ranking


def checked_dpc_dilations(dilations, name="DPC dilations"):
    """``dilations`` as 5 (row, col) tuples, one per DPC branch; else an error naming ``name``."""
    pairs = [tuple(d) for d in dilations]
    if len(pairs) != 5 or any(len(d) != 2 for d in pairs):
        raise ValueError(
            f"{name}={[list(d) for d in pairs]}; expected 5 (row, col) pairs, one per DPC branch "
            "(the paper: [[1, 6], [1, 1], [6, 21], [18, 15], [6, 3]])"
        )
    return pairs


def hard_pixel_cross_entropy(
    logits, targets, *, ignore_index=255, fraction=0.25, ranking="image", image_sizes=None
):
    """Cross entropy of the hardest ``fraction`` of the pixels (the paper's hardest-pixel loss).

    The paper weights the worst quarter of an image's W*H pixel losses by 4/(W*H): the sum of
    the top ``k = ceil(fraction * H * W)`` losses of each image divided by k, averaged over the
    images (``ranking="image"``). The authors' code ranks the losses of the whole batch together
    (``ranking="batch"``: k from the pixels of all images). Ignored pixels inside an image are
    part of its W*H with a loss of 0, as in both: an image with few labelled pixels contributes
    less. W*H is the image's own size (``image_sizes``, (h, w) per image): an image smaller than
    the padded batch tensor (a crop of a down-scaled image) does not count the padding, whose
    targets are ``ignore_index``. Without ``image_sizes`` every image fills the tensor.

    Args:
        logits: (N, C, H, W) float. targets: (N, H, W) int64 class indices or ``ignore_index``.
        image_sizes: optional (h, w) of each image inside the (H, W) tensor.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"hard-pixel fraction must be in (0, 1], got {fraction}")
    checked_ranking(ranking)
    losses = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
    if image_sizes is None:
        image_sizes = [targets.shape[-2:]] * len(targets)
    pixels = [h * w for h, w in image_sizes]
    if ranking == "batch":
        return _mean_of_hardest(losses.flatten(), math.ceil(fraction * sum(pixels)))
    per_image = [
        _mean_of_hardest(loss.flatten(), math.ceil(fraction * count))
        for loss, count in zip(losses, pixels)
    ]
    return torch.stack(per_image).mean()


def _mean_of_hardest(losses, k):
    """Sum of the ``k`` largest losses divided by k (zeros, the ignored pixels, fill short)."""
    k = max(1, k)
    hardest = losses.topk(k, sorted=False).values if k < losses.numel() else losses
    return hardest.sum() / k


class LSFE(nn.Sequential):
    """Large-scale feature extractor: two 3x3 separable convs (in -> dim -> dim)."""

    def __init__(self, in_channels, dim, *, norm, act):
        super().__init__(
            SeparableConv2d(in_channels, dim, 3, norm=norm, act=act),
            SeparableConv2d(dim, dim, 3, norm=norm, act=act),
        )


class DPC(nn.Module):
    """Dense prediction cell: five dilated separable 3x3 branches, concat, 1x1 to ``dim``.

    Branch 0 reads the input; branches 1, 2, 3 read branch 0; branch 4 reads branch 3.
    """

    def __init__(self, in_channels, dim, *, dilations=PAPER_DPC_DILATIONS, norm, act):
        super().__init__()
        self.branches = nn.ModuleList(
            SeparableConv2d(in_channels, in_channels, 3, dilation=d, norm=norm, act=act)
            for d in checked_dpc_dilations(dilations)
        )
        self.project = conv_norm_act(5 * in_channels, dim, 1, norm=norm, act=act)

    def forward(self, x):
        b0 = self.branches[0](x)
        b1 = self.branches[1](b0)
        b2 = self.branches[2](b0)
        b3 = self.branches[3](b0)
        b4 = self.branches[4](b3)
        return self.project(torch.cat([b0, b1, b2, b3, b4], dim=1))


class MismatchCorrection(nn.Module):
    """Two 3x3 separable convs, then bilinear upsampling (x2) to the next finer level's size."""

    def __init__(self, dim, *, norm, act):
        super().__init__()
        self.convs = nn.Sequential(
            SeparableConv2d(dim, dim, 3, norm=norm, act=act),
            SeparableConv2d(dim, dim, 3, norm=norm, act=act),
        )

    def forward(self, x, size):
        return _resize(self.convs(x), size)


def _resize(x, size):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@SEM_SEG_HEADS_REGISTRY.register()
class EfficientPSSemSegHead(nn.Module):
    """Semantic head of EfficientPS over p2 (1/4), p3 (1/8), p4 (1/16), p5 (1/32).

    ``forward(features, targets)`` returns ``(logits, losses)`` in training and ``(logits, {})``
    at inference: unlike detectron2's SemSegFPNHead it hands back the logits in training as
    well, because EfficientPS' learned panoptic fusion trains on them. Logits have
    ``num_classes`` channels at the padded input size.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes,
        in_features=("p2", "p3", "p4", "p5"),
        conv_dims=128,
        norm="BN",
        activation="leaky_relu",
        dpc_dilations=PAPER_DPC_DILATIONS,
        ignore_value=255,
        loss_weight=1.0,
        hard_pixel_fraction=0.25,
        hard_pixel_ranking="image",
        activation_checkpointing=False,
    ):
        """
        Args:
            input_shape: ShapeSpec of each feature level.
            num_classes: semantic classes (stuff and thing).
            in_features: the four levels, finest (1/4) first.
            conv_dims: channels of LSFE, DPC outputs and MC (128 in the paper).
            norm, activation: after every conv (layers.NORMS, layers.ACTIVATIONS).
            dpc_dilations: five (row, col) dilations of the DPC branches.
            ignore_value: label excluded from the loss.
            loss_weight: multiplies the semantic loss.
            hard_pixel_fraction: fraction of the hardest pixels whose loss counts (1.0: all).
            hard_pixel_ranking: rank per "image" (paper) or over the "batch" (authors' code).
            activation_checkpointing: in training, keep only the input levels for backward
                and run the head again then (``modeling.activation_checkpointing``).
        """
        super().__init__()
        if len(in_features) != 4:
            raise ValueError(f"EfficientPS' semantic head takes 4 levels, got {in_features}")
        self.in_features = list(in_features)
        shapes = [input_shape[f] for f in self.in_features]
        self.common_stride = shapes[0].stride
        kw = {"norm": norm, "act": activation}
        self.lsfe_4 = LSFE(shapes[0].channels, conv_dims, **kw)
        self.lsfe_8 = LSFE(shapes[1].channels, conv_dims, **kw)
        self.dpc_16 = DPC(shapes[2].channels, conv_dims, dilations=dpc_dilations, **kw)
        self.dpc_32 = DPC(shapes[3].channels, conv_dims, dilations=dpc_dilations, **kw)
        self.mc_16_to_8 = MismatchCorrection(conv_dims, **kw)
        self.mc_8_to_4 = MismatchCorrection(conv_dims, **kw)
        self.level_channels = conv_dims
        self.predictor = Conv2d(4 * conv_dims, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.hard_pixel_fraction = hard_pixel_fraction
        self.hard_pixel_ranking = checked_ranking(
            hard_pixel_ranking, "MODEL.SEM_SEG_HEAD.HARD_PIXEL_RANKING"
        )
        self.activation_checkpointing = activation_checkpointing

    @classmethod
    def from_config(cls, cfg, input_shape):
        sem_seg_cfg = cfg.MODEL.SEM_SEG_HEAD
        check_layer_names(cfg, "SEM_SEG_HEAD")
        dilations = checked_dpc_dilations(
            sem_seg_cfg.DPC_DILATIONS, "MODEL.SEM_SEG_HEAD.DPC_DILATIONS"
        )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in sem_seg_cfg.IN_FEATURES},
            "num_classes": sem_seg_cfg.NUM_CLASSES,
            "in_features": sem_seg_cfg.IN_FEATURES,
            "conv_dims": sem_seg_cfg.CONVS_DIM,
            "norm": sem_seg_cfg.NORM,
            "activation": sem_seg_cfg.ACTIVATION,
            "dpc_dilations": dilations,
            "ignore_value": sem_seg_cfg.IGNORE_VALUE,
            "loss_weight": sem_seg_cfg.LOSS_WEIGHT,
            "hard_pixel_fraction": sem_seg_cfg.HARD_PIXEL_FRACTION,
            "hard_pixel_ranking": sem_seg_cfg.HARD_PIXEL_RANKING,
            "activation_checkpointing": sem_seg_cfg.ACTIVATION_CHECKPOINTING,
        }

    def layers(self, features):
        """Logits at the finest input level (1/4) from the feature dict."""
        p4, p8, p16, p32 = (features[f] for f in self.in_features)
        d32 = self.dpc_32(p32)
        d16 = self.dpc_16(p16)
        m8 = self.mc_16_to_8(d16 + _resize(d32, d16.shape[-2:]), p8.shape[-2:])
        l8 = self.lsfe_8(p8) + m8
        l4 = self.lsfe_4(p4) + self.mc_8_to_4(l8, p4.shape[-2:])
        return self._predict_concat([l4, l8, d16, d32])

    def _layers_of_levels(self, *levels):
        return self.layers(dict(zip(self.in_features, levels)))

    def _predict_concat(self, levels):
        """The 1x1 classifier over cat([l4, up(l8), up(d16), up(d32)]), without the concat.

        A 1x1 conv over a channel concat is the sum of 1x1 convs over the parts, and bilinear
        resizing (weights summing to 1) commutes with a 1x1 conv, so each coarse level is
        classified first and its 19-channel logits are resized, not its 128 channels: the same
        function (and the same parameters) without the 4x128-channel tensor at 1/4 resolution.
        """
        weight, bias = self.predictor.weight, self.predictor.bias
        # Split by the constant width, not by the traced x.shape[1]: exported, the parts are
        # then constant weights (which int8 quantization needs), not Slices of the weight.
        parts = weight.split(self.level_channels, dim=1)
        size = levels[0].shape[-2:]
        logits = F.conv2d(levels[0], parts[0], bias)
        for x, part in zip(levels[1:], parts[1:]):
            logits = logits + _resize(F.conv2d(x, part), size)
        return logits

    def forward(self, features, targets=None, image_sizes=None):
        """Semantic logits at the input resolution, and the loss in training.

        Args:
            features: the FPN levels (``in_features``).
            targets: (N, H, W) semantic targets in training, padded with ``ignore_value``.
            image_sizes: (h, w) of each image inside the padded tensor: the hardest-pixel
                loss ranks a fraction of each image's own pixels (None: the whole tensor).
        """
        if checkpointing_active(self.activation_checkpointing, self):
            levels = [features[f] for f in self.in_features]
            logits = checkpointed(self, *levels, function=self._layers_of_levels)
        else:
            logits = self.layers(features)
        logits = F.interpolate(
            logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )
        if not self.training:
            return logits, {}
        if targets is None:
            raise ValueError("EfficientPSSemSegHead needs sem_seg targets in training")
        return logits, self.losses(logits, targets, image_sizes)

    def losses(self, logits, targets, image_sizes=None):
        loss = hard_pixel_cross_entropy(
            logits,
            targets,
            ignore_index=self.ignore_value,
            fraction=self.hard_pixel_fraction,
            ranking=self.hard_pixel_ranking,
            image_sizes=image_sizes,
        )
        return {"loss_sem_seg": loss * self.loss_weight}
