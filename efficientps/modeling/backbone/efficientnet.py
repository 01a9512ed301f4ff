"""EfficientNet b0..b7 as a detectron2 bottom-up Backbone (res2..res5 at strides 4..32).

The architecture (block arguments, width/depth scaling) comes from efficientnet-pytorch, so every
variant matches its ImageNet weights; the modules are rebuilt here with detectron2 layers so that
the norm and activation are configurable (the paper: BN + LeakyReLU(0.01), no squeeze-excitation),
BatchNorm can be folded for inference, and no pad is computed at run time for stride-1 convs.
"""

import functools
from typing import Dict

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from efficientnet_pytorch.utils import get_model_params, round_filters, round_repeats
from torch import nn
from torch.nn import functional as F
from torchvision.ops import stochastic_depth

from ..activation_checkpointing import checkpointed, checkpointing_active
from ..layers import (
    SamePadConv2d,
    build_activation,
    build_norm,
    capturing_a_graph,
    check_layer_names,
    same_pad,
)

EFFICIENTNET_NAMES = tuple(f"efficientnet-b{i}" for i in range(8))
# EfficientNet's TF batch norm: eps 1e-3, decay 0.99 (= PyTorch momentum 0.01).
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
PADDINGS = ("same", "symmetric")
# Block groups (efficientnet-pytorch's 7 "stages") that end at each tap; res5 ends with the head.
TAP_AFTER_GROUP = {"res2": 1, "res3": 2, "res4": 4, "res5": 6}
TAP_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeezed, activation):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.activation = build_activation(activation)

    def forward(self, x):
        scale = self.expand(self.activation(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class MBConvBlock(nn.Module):
    """Inverted residual block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ skip)."""

    def __init__(
        self,
        args,
        *,
        se,
        norm,
        activation,
        drop_connect_rate,
        project_activation=False,
        tf_same=True,
    ):
        """``norm``: channels -> norm layer (or None). ``tf_same``: TF 'SAME' padding (else
        symmetric); see ``SamePadConv2d``."""
        super().__init__()
        conv = functools.partial(SamePadConv2d, tf_same=tf_same)
        stride = args.stride[0] if isinstance(args.stride, (list, tuple)) else args.stride
        hidden = args.input_filters * args.expand_ratio
        self.expand = None
        if args.expand_ratio != 1:
            self.expand = conv(
                args.input_filters,
                hidden,
                1,
                bias=False,
                norm=norm(hidden),
                activation=build_activation(activation),
            )
        self.depthwise = conv(
            hidden,
            hidden,
            args.kernel_size,
            stride=stride,
            groups=hidden,
            bias=False,
            norm=norm(hidden),
            activation=build_activation(activation),
        )
        self.se = None
        if se and args.se_ratio:
            squeezed = max(1, int(args.input_filters * args.se_ratio))
            self.se = SqueezeExcitation(hidden, squeezed, activation)
        self.project = conv(
            hidden,
            args.output_filters,
            1,
            bias=False,
            norm=norm(args.output_filters),
            activation=build_activation(activation) if project_activation else None,
        )
        self.residual = args.id_skip and stride == 1 and args.input_filters == args.output_filters
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x):
        if self.expand is None:
            out = self.depthwise(x)
        else:
            out = self._expand_depthwise(x)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        if not self.residual:
            return out
        # Stochastic depth (drop-connect): drops the whole residual branch per sample.
        out = stochastic_depth(out, self.drop_connect_rate, "row", self.training)
        return out + x

    def _expand_depthwise(self, x):
        if not torch.jit.is_scripting():  # TorchScript: the plain order (no in-place border)
            if self.depthwise.stride[0] > 1 and self._pad_before_expand():
                return self._expand_padded(x)
        return self.depthwise(self.expand(x))

    def _pad_before_expand(self):
        # Per-pixel norms only (eval BN, FrozenBN, folded): the padded border must not change
        # batch or group statistics. Autograd off: the border is cleared in place. Not while a
        # graph is captured: the border's slices would be recorded for the sample's size.
        norm = self.expand.norm
        return (
            self.depthwise.tf_same
            and not self.training
            and not torch.is_grad_enabled()
            and not capturing_a_graph()
            and not isinstance(norm, (nn.GroupNorm, nn.SyncBatchNorm))
        )

    def _expand_padded(self, x):
        """expand -> stride-2 depthwise, with TF 'SAME' padding done on the narrow input.

        Padding the expanded tensor (6x the channels, e.g. 144 x 512 x 1024 floats = 300 MB in
        b5 at 1024x2048) would copy it; instead the 1x1 expansion runs on the padded input and
        its border, where the depthwise conv must see F.pad's zeros, is cleared in place.
        Inference only (the border would enter training BatchNorm's statistics).
        """
        left, right, top, bottom = same_pad(
            x.shape[-2:], self.depthwise.kernel_size[0], self.depthwise.stride[0]
        )
        out = self.expand(F.pad(x, (left, right, top, bottom)))
        height, width = out.shape[-2:]
        out[..., :top, :] = 0
        out[..., height - bottom :, :] = 0
        out[..., :, :left] = 0
        out[..., :, width - right :] = 0
        return self.depthwise.forward_padded(out)


def efficientnet_block_args(name):
    """efficientnet-pytorch's per-block arguments for ``name``, with width/depth scaling applied.

    Returns (list of (group index, BlockArgs), stem channels, head channels).
    """
    if name not in EFFICIENTNET_NAMES:
        raise ValueError(f"unknown EfficientNet {name!r}; expected one of {EFFICIENTNET_NAMES}")
    blocks_args, params = get_model_params(name, {})
    blocks = []
    for group, args in enumerate(blocks_args):
        args = args._replace(
            input_filters=round_filters(args.input_filters, params),
            output_filters=round_filters(args.output_filters, params),
            num_repeat=round_repeats(args.num_repeat, params),
        )
        blocks.append((group, args))
        repeat_args = args._replace(input_filters=args.output_filters, stride=[1])
        blocks += [(group, repeat_args)] * (args.num_repeat - 1)
    return blocks, round_filters(32, params), round_filters(1280, params)


class EfficientNet(Backbone):
    """EfficientNet trunk with taps res2..res5 (strides 4, 8, 16, 32).

    res5 is the output of the final 1x1 head conv (2048 channels for b5), as in EfficientPS.
    """

    def __init__(
        self,
        *,
        name="efficientnet-b5",
        se=False,
        norm="BN",
        activation="leaky_relu",
        out_features=("res2", "res3", "res4", "res5"),
        drop_connect_rate=0.2,
        freeze_at=0,
        activation_checkpointing=False,
        ds_project_activation=False,
        norm_momentum=BN_MOMENTUM,
        norm_eps=BN_EPS,
        padding="same",
    ):
        """
        Args:
            name: "efficientnet-b0" .. "efficientnet-b7".
            se: keep the squeeze-and-excitation blocks (the paper removes them).
            norm, activation: after every conv (layers.NORMS, layers.ACTIVATIONS).
            out_features: taps among res2..res5 (strides 4..32).
            drop_connect_rate: stochastic depth of the last block (linear in block index).
            freeze_at: freeze the stem (1) and stages res2..res{freeze_at}.
            activation_checkpointing: in training, keep only each block's input for backward
                and recompute the block then (less memory, one more backbone forward in time;
                exact: see ``modeling.activation_checkpointing``).
            ds_project_activation: the activation also after the 1x1 projection of the
                blocks without expansion (the first stage's depthwise-separable blocks). The
                projection is linear in EfficientNet and the paper; the authors' code activates
                it (their iABN there keeps its LeakyReLU), and their released weights expect it.
            norm_momentum: running-statistics momentum of the norms (PyTorch convention):
                EfficientNet's TF value 0.01 by default; the authors' port leaves it at 0.1.
            norm_eps: the norms' epsilon: 1e-3 for TF-trained weights (efficientnet-pytorch,
                timm's ``tf_*``, the authors' init), 1e-5 for timm's ``efficientnet_b*``.
            padding: "same" (TensorFlow's, for TF-trained weights) or "symmetric" ((k-1)/2 on
                every side, timm's ``efficientnet_b*``).
        """
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"EfficientNet padding {padding!r}; expected one of {PADDINGS}")
        unknown = set(out_features) - set(TAP_STRIDES)
        if unknown:
            raise ValueError(f"unknown EfficientNet out_features {sorted(unknown)}")
        self.name = name
        blocks, stem_channels, head_channels = efficientnet_block_args(name)
        make_norm = functools.partial(build_norm, norm, eps=norm_eps, momentum=norm_momentum)
        tf_same = padding == "same"

        self.stem = SamePadConv2d(
            3,
            stem_channels,
            3,
            stride=2,
            tf_same=tf_same,
            bias=False,
            norm=make_norm(stem_channels),
            activation=build_activation(activation),
        )
        # Taps are sequential stages so that forward is one call per stage, not per block.
        stages = {tap: [] for tap in TAP_STRIDES}
        tap_of_group = {}
        for tap in reversed(list(TAP_STRIDES)):
            for group in range(TAP_AFTER_GROUP[tap] + 1):
                tap_of_group[group] = tap
        self._block_index = []  # (stage, position) of efficientnet-pytorch's block i
        for i, (group, args) in enumerate(blocks):
            rate = drop_connect_rate * i / len(blocks)
            tap = tap_of_group[group]
            self._block_index.append((tap, len(stages[tap])))
            block = MBConvBlock(
                args,
                se=se,
                norm=make_norm,
                activation=activation,
                drop_connect_rate=rate,
                project_activation=ds_project_activation and args.expand_ratio == 1,
                tf_same=tf_same,
            )
            stages[tap].append(block)
        head = SamePadConv2d(
            blocks[-1][1].output_filters,
            head_channels,
            1,
            bias=False,
            norm=make_norm(head_channels),
            activation=build_activation(activation),
        )
        stages["res5"].append(head)
        self.stage_names = []
        channels = {"res5": head_channels}
        last_tap = max(out_features, key=lambda t: TAP_STRIDES[t])
        for tap in TAP_STRIDES:
            if self.stage_names and self.stage_names[-1] == last_tap:
                # Not computed; an empty stage (no parameters) keeps TorchScript's
                # unrolled forward valid.
                self.add_module(tap, nn.Sequential())
                continue
            self.add_module(tap, nn.Sequential(*stages[tap]))
            if tap != "res5":
                channels[tap] = stages[tap][-1].project.out_channels
            self.stage_names.append(tap)
        self.activation_checkpointing = activation_checkpointing
        self._out_features = list(out_features)
        self._out_feature_strides = {t: TAP_STRIDES[t] for t in out_features}
        self._out_feature_channels = {t: channels[t] for t in out_features}
        self.freeze(freeze_at)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"EfficientNet expects (N, 3, H, W) images, got {x.shape}")
        if torch.jit.is_scripting():
            return self._scripted_stages(self.stem(x))
        outputs = {}
        x = self.stem(x)
        checkpointing = checkpointing_active(self.activation_checkpointing, self)
        for tap in self.stage_names:
            stage = getattr(self, tap)
            if checkpointing:
                for block in stage:
                    x = checkpointed(block, x)
            else:
                x = stage(x)
            if tap in self._out_features:
                outputs[tap] = x
        return outputs

    def _scripted_stages(self, x):
        """forward's stage loop unrolled for TorchScript (no getattr by name); the stages
        past the last tap are empty."""
        outputs: Dict[str, torch.Tensor] = {}
        x = self.res2(x)
        if "res2" in self._out_features:
            outputs["res2"] = x
        x = self.res3(x)
        if "res3" in self._out_features:
            outputs["res3"] = x
        x = self.res4(x)
        if "res4" in self._out_features:
            outputs["res4"] = x
        x = self.res5(x)
        if "res5" in self._out_features:
            outputs["res5"] = x
        return outputs

    def block_positions(self):
        """(stage name, index in it) of each MBConv block, in EfficientNet's block order."""
        return list(self._block_index)

    @property
    def size_divisibility(self):
        return 32

    @property
    def padding_constraints(self):
        # detectron2 main asks for this; v0.6 reads size_divisibility.
        return {"size_divisibility": 32}

    def freeze(self, freeze_at=0):
        """Freeze the stem (freeze_at >= 1) and stages res2..res{freeze_at} (as ResNet)."""
        frozen = [self.stem] if freeze_at >= 1 else []
        frozen += [
            getattr(self, f"res{i}") for i in range(2, freeze_at + 1) if hasattr(self, f"res{i}")
        ]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad = False
            FrozenBatchNorm2d.convert_frozen_batchnorm(module)
        return self


@BACKBONE_REGISTRY.register()
def build_efficientnet_backbone(cfg, input_shape=None):
    """EfficientNet bottom-up backbone from ``cfg.MODEL.EFFICIENTNET``."""
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(f"EfficientNet takes 3-channel images, got {input_shape.channels}")
    efficientnet_cfg = cfg.MODEL.EFFICIENTNET
    check_layer_names(cfg, "EFFICIENTNET")
    backbone = EfficientNet(
        name=efficientnet_cfg.NAME,
        se=efficientnet_cfg.SE,
        norm=efficientnet_cfg.NORM,
        activation=efficientnet_cfg.ACTIVATION,
        out_features=efficientnet_cfg.OUT_FEATURES,
        drop_connect_rate=efficientnet_cfg.DROP_CONNECT_RATE,
        activation_checkpointing=efficientnet_cfg.ACTIVATION_CHECKPOINTING,
        ds_project_activation=efficientnet_cfg.DS_PROJECT_ACTIVATION,
        norm_momentum=efficientnet_cfg.NORM_MOMENTUM,
        norm_eps=efficientnet_cfg.NORM_EPS,
        padding=efficientnet_cfg.PADDING,
    )
    if efficientnet_cfg.WEIGHTS:
        # The build-time conversion is gone (it made this module import the converter's, which
        # imports this one); the key stays so that an old config fails here, saying what to do.
        raise ValueError(
            f"MODEL.EFFICIENTNET.WEIGHTS={efficientnet_cfg.WEIGHTS!r} was removed: convert the "
            "ImageNet file once with tools/convert_imagenet_checkpoint.py and give the result "
            "as MODEL.WEIGHTS (MODEL.EFFICIENTNET.WEIGHTS must be empty)"
        )
    # Freeze after loading, so that FrozenBN takes the loaded statistics.
    return backbone.freeze(efficientnet_cfg.FREEZE_AT)
