"""The 2-way FPN of EfficientPS, and the backbone builders that put a neck on EfficientNet.

Two independent sets of 1x1 laterals feed a top-down path (coarse to fine, nearest upsampling,
as in FPN) and a bottom-up path (fine to coarse, nearest downsampling: no parameters the paper
does not count). Each level sums both paths and applies one 3x3 conv (separable in the paper).
"""

from typing import Dict, List

import torch
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from torch import nn
from torch.nn import functional as F

from ..activation_checkpointing import checkpointed, checkpointing_active
from ..layers import check_layer_names, conv_norm_act, conv_or_separable
from .efficientnet import build_efficientnet_backbone


class TwoWayFPN(Backbone):
    """2-way FPN over a bottom-up backbone: outputs p2..p5 (+ optional p6) with ``out_channels``."""

    def __init__(
        self,
        bottom_up,
        *,
        in_features=("res2", "res3", "res4", "res5"),
        out_channels=256,
        norm="BN",
        activation="leaky_relu",
        separable=True,
        top_block=None,
        activation_checkpointing=False,
    ):
        """
        Args:
            bottom_up (Backbone): gives the ``in_features`` maps, finest first.
            in_features (list[str]): the bottom-up maps the FPN takes (res2..res5 for p2..p5).
            out_channels (int): channels of every lateral and output conv (256 in the paper).
            norm (str): after every conv, one of layers.NORMS (the paper: iABN = BN + act).
            activation (str): after every norm, one of layers.ACTIVATIONS.
            separable (bool): depthwise-separable 3x3 output convs (paper) or regular (authors'
                code).
            top_block (nn.Module or None): e.g. LastLevelMaxPool, applied to the coarsest output
                to add p6 for stock RPN configs.
            activation_checkpointing (bool): in training, keep only the bottom-up maps for
                backward and run the two paths again then (``modeling.activation_checkpointing``).
        """
        super().__init__()
        self.bottom_up = bottom_up
        shapes = bottom_up.output_shape()
        self.in_features = list(in_features)
        strides = [shapes[f].stride for f in self.in_features]
        if strides != sorted(strides):
            raise ValueError(f"2-way FPN in_features must go fine to coarse, got {in_features}")

        def laterals():
            return nn.ModuleList(
                conv_norm_act(shapes[f].channels, out_channels, 1, norm=norm, act=activation)
                for f in self.in_features
            )

        self.lateral_top_down = laterals()
        self.lateral_bottom_up = laterals()
        self.output_convs = nn.ModuleList(
            conv_or_separable(
                out_channels, out_channels, 3, separable=separable, norm=norm, act=activation
            )
            for _ in self.in_features
        )
        self.top_block = top_block
        self.activation_checkpointing = activation_checkpointing

        levels = [f"p{int(s).bit_length() - 1}" for s in strides]  # stride 4 -> p2
        self._out_feature_strides = dict(zip(levels, strides))
        if top_block is not None:
            last = strides[-1]
            for i in range(top_block.num_levels):
                self._out_feature_strides[f"p{(last << (i + 1)).bit_length() - 1}"] = last << (
                    i + 1
                )
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]

    def forward(self, x):
        features = self.bottom_up(x)
        inputs = [features[f] for f in self.in_features]
        del features
        if torch.jit.is_scripting():
            outputs = self._scripted_two_way_paths(inputs)
        elif checkpointing_active(self.activation_checkpointing, self):
            outputs = checkpointed(self, *inputs, function=self._two_way_paths)
        else:
            outputs = self._two_way_paths(*inputs)
        if self.top_block is not None:
            outputs.extend(self.top_block(outputs[-1]))
        named: Dict[str, torch.Tensor] = {}
        for name, output in zip(self._out_features, outputs):
            named[name] = output
        return named

    def _two_way_paths(self, *inputs):
        """Top-down and bottom-up paths summed per level, then the output convs (finest first)."""
        inputs = list(inputs)
        # Memory: the finest level's maps are the largest tensors of the model (256 channels at
        # 1/4), so each is released as soon as it has been used and sums are taken in place
        # into freshly resized copies (nearest resizing and addition need no saved outputs in
        # backward, so this is autograd-safe). a + b == b + a in floating point: the results
        # are the same as with out-of-place sums.
        n = len(inputs)
        top_down = [None] * n
        top_down[-1] = self.lateral_top_down[-1](inputs[-1])
        for i in range(n - 2, -1, -1):
            coarser = F.interpolate(top_down[i + 1], size=inputs[i].shape[-2:], mode="nearest")
            top_down[i] = coarser.add_(self.lateral_top_down[i](inputs[i]))

        outputs = []
        carry = None  # the bottom-up path so far, resized to the current level
        for i in range(n):
            bottom_up = self.lateral_bottom_up[i](inputs[i])
            if carry is not None:
                bottom_up = carry.add_(bottom_up)
            carry = None
            if i + 1 < n:
                carry = F.interpolate(bottom_up, size=inputs[i + 1].shape[-2:], mode="nearest")
            summed = top_down[i] + bottom_up
            top_down[i] = bottom_up = None
            outputs.append(self.output_convs[i](summed))
        return outputs

    def _scripted_two_way_paths(self, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        """``_two_way_paths`` for TorchScript, which cannot index a ModuleList by a loop
        variable: each ModuleList is applied in one enumerate loop, and the laterals of all
        levels are held at once (same sums in the same order, more memory)."""
        n = len(inputs)
        top_down: List[torch.Tensor] = []
        for i, lateral in enumerate(self.lateral_top_down):
            top_down.append(lateral(inputs[i]))
        for i in range(n - 2, -1, -1):
            coarser = F.interpolate(top_down[i + 1], size=inputs[i].shape[-2:], mode="nearest")
            top_down[i] = coarser + top_down[i]
        summed: List[torch.Tensor] = []
        carry = torch.empty(0)
        for i, lateral in enumerate(self.lateral_bottom_up):
            bottom_up = lateral(inputs[i])
            if i > 0:
                bottom_up = carry + bottom_up
            if i + 1 < n:
                carry = F.interpolate(bottom_up, size=inputs[i + 1].shape[-2:], mode="nearest")
            summed.append(top_down[i] + bottom_up)
        outputs: List[torch.Tensor] = []
        for i, output_conv in enumerate(self.output_convs):
            outputs.append(output_conv(summed[i]))
        return outputs

    @property
    def size_divisibility(self):
        return self._size_divisibility

    @property
    def padding_constraints(self):
        return {"size_divisibility": self._size_divisibility}


TOP_BLOCKS = {"": None, "maxpool": LastLevelMaxPool}


@BACKBONE_REGISTRY.register()
def build_efficientnet_2wayfpn_backbone(cfg, input_shape=None):
    """EfficientNet + 2-way FPN (EfficientPS' backbone), from MODEL.EFFICIENTNET/TWO_WAY_FPN."""
    fpn_cfg = cfg.MODEL.TWO_WAY_FPN
    check_layer_names(cfg, "TWO_WAY_FPN")
    if fpn_cfg.TOP_BLOCK not in TOP_BLOCKS:
        raise ValueError(
            f"MODEL.TWO_WAY_FPN.TOP_BLOCK={fpn_cfg.TOP_BLOCK!r}; expected one of {list(TOP_BLOCKS)}"
        )
    top_block = TOP_BLOCKS[fpn_cfg.TOP_BLOCK]
    return TwoWayFPN(
        build_efficientnet_backbone(cfg, input_shape),
        in_features=fpn_cfg.IN_FEATURES,
        out_channels=fpn_cfg.OUT_CHANNELS,
        norm=fpn_cfg.NORM,
        activation=fpn_cfg.ACTIVATION,
        separable=fpn_cfg.SEPARABLE,
        top_block=top_block() if top_block is not None else None,
        activation_checkpointing=fpn_cfg.ACTIVATION_CHECKPOINTING,
    )


@BACKBONE_REGISTRY.register()
def build_efficientnet_fpn_backbone(cfg, input_shape=None):
    """EfficientNet under detectron2's standard FPN (MODEL.FPN keys), with p6 by max-pooling."""
    bottom_up = build_efficientnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
